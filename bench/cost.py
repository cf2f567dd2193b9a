"""What the sidecar costs at the rates Nexus really writes: ``python -m bench.cost [--quick]``.

Issue 25. The daemon with defaults and one webhook sink to a 0 ms receiver
(``bench/receiver.py``); the WAL written by Nexus's group commit (4 writer threads,
500 us batching, 1 MiB segments and a new empty file per batch in the last fifth of
each: ``bench.e2e.common.new_group_commit``). In each run, one daemon:

- **idle**: its CPU% (utime+stime from ``/proc``, of one core) over a window with
  nothing written, after a warm-up that leaves one connection up;
- **100, 500 and 1,000 appends/s**: its CPU% over a window of writing at each rate;
- **latency**: every entry written at 1,000/s, from its batch's fsync (when Nexus's
  ``Append`` returns) to its arrival at the receiver; both sides read CLOCK_MONOTONIC.
  A line can be read as soon as its write() returns, before the fsync does: an arrival
  before the fsync returned is a negative latency.

Then, with a new daemon each time, the **first segment**: the daemon started on an
empty WAL directory (and on a missing one), left alone a second, then the writer starts
at 500 appends/s: the first entry's fsync to arrival, and the worst of the first second.

Every figure is the median of the runs (3; 1 with ``--quick``), with each run's figure
in the detail so that "three runs out of three" can be read off the table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench import Row, machine_summary, percentile, print_table, stage
from bench.common import Receiver, http_get
from bench.e2e.common import (
    Daemon,
    new_group_commit,
    paced_group_write,
    wait_for,
)

RATES = (100, 500, 1_000)
LATENCY_RATE = 1_000
TARGET_CPU_PCT = {0: 0.3, 100: 2.0, 500: 5.0, 1_000: 8.0}  # 0: idle
TARGET_P50_MS, TARGET_P99_MS = 1.5, 4.0
TARGET_FIRST_MS = 50.0
FIRST_RATE = 500
FIRST_SETTLE_S = 1.0  # the daemon is left alone this long before the first segment appears


@dataclass(slots=True)
class CostRun:
    cpu_pct: dict[int, float] = field(default_factory=dict)  # appends/s (0: idle) -> CPU%
    rates: dict[int, float] = field(default_factory=dict)  # the rate actually written
    latencies_ms: list[float] = field(default_factory=list)  # at LATENCY_RATE
    lost: int = 0  # written at LATENCY_RATE, never arrived


@dataclass(slots=True)
class FirstRun:
    how: str  # "empty" or "missing"
    first_ms: float
    worst_ms: float
    arrived: int
    written: int


def _arrived(rcv: Receiver, n: int) -> bool:
    return bool(rcv.stats()["unique"] >= n)


def cost_run(rcv: Receiver, work: Path, window_s: float) -> CostRun:
    res = CostRun()
    with Daemon(work, [{"name": "bench", "url": rcv.url}]).start() as d:
        commit = new_group_commit(d.wal)
        base = rcv.stats()["unique"]
        warm = paced_group_write(commit, 50, 0.4)  # one connection up, the watcher live
        wait_for(lambda: _arrived(rcv, base + len(warm.fsynced)), 10, "the warm-up")
        time.sleep(1.0)
        res.cpu_pct[0], _ = d.cpu_pct(lambda: time.sleep(window_s))
        written = base + len(warm.fsynced)
        for rate in RATES:
            pct, paced = d.cpu_pct(partial(paced_group_write, commit, rate, window_s))
            res.cpu_pct[rate], res.rates[rate] = pct, paced.rate
            written += len(paced.fsynced)
            wait_for(partial(_arrived, rcv, written), 10, f"the arrivals at {rate}/s")
            if rate == LATENCY_RATE:
                arrivals: dict[str, int] = rcv.stats(arrivals=True)["arrivals"]
                res.latencies_ms = [
                    (arrivals[k] - t) / 1e6 for k, t in paced.fsynced.items() if k in arrivals
                ]
                res.lost = len(paced.fsynced) - len(res.latencies_ms)
            time.sleep(0.5)  # the last requests' answers, before the next window
        commit.close()
    return res


def first_run(rcv: Receiver, work: Path, how: str) -> FirstRun:
    """A daemon on an empty (or missing) WAL directory; then the first segment appears."""
    d = Daemon(work, [{"name": "bench", "url": rcv.url}])
    if how == "missing":
        d.wal.rmdir()
    with d.start(wait=False):
        deadline = time.monotonic() + 30
        while True:  # up (not ready: a missing directory is not ready until it appears)
            d.check_alive()
            try:
                http_get(d.admin_port, "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"daemon not up:\n{d.log_tail()}") from None
                time.sleep(0.05)
        time.sleep(FIRST_SETTLE_S)
        d.wal.mkdir(mode=0o700, exist_ok=True)
        base = rcv.stats()["unique"]
        commit = new_group_commit(d.wal)
        paced = paced_group_write(commit, FIRST_RATE, 1.0)
        commit.close()
        wait_for(lambda: _arrived(rcv, base + len(paced.fsynced)), 10, "the first second")
    arrivals: dict[str, int] = rcv.stats(arrivals=True)["arrivals"]
    ordered = sorted(paced.fsynced.items(), key=lambda kv: kv[1])
    lat = [(arrivals[k] - t) / 1e6 for k, t in ordered if k in arrivals]
    return FirstRun(how, lat[0], max(lat), len(lat), len(ordered))


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def rows_for(runs: list[CostRun], firsts: list[FirstRun]) -> list[Row]:
    rows: list[Row] = []
    n = len(runs)
    for rate in (0, *RATES):
        each = [r.cpu_pct[rate] for r in runs]
        target = TARGET_CPU_PCT[rate]
        met = sum(v <= target for v in each)
        written = (
            ""
            if rate == 0
            else f"; written {statistics.median(r.rates[rate] for r in runs):,.0f}/s"
        )
        rows.append(
            Row(
                "cost",
                "idle CPU" if rate == 0 else f"CPU at {rate:,} appends/s",
                f"{statistics.median(each):.2f} %",
                f"runs {' / '.join(f'{v:.2f}' for v in each)}; target <= {target} %: "
                f"{_met(met == n)} in {met}/{n}{written}",
            )
        )
    p50s = [percentile(r.latencies_ms, 50) for r in runs]
    p99s = [percentile(r.latencies_ms, 99) for r in runs]
    met = sum(a <= TARGET_P50_MS and b <= TARGET_P99_MS for a, b in zip(p50s, p99s, strict=True))
    lost = sum(r.lost for r in runs)
    rows.append(
        Row(
            "cost",
            f"fsync -> arrival at {LATENCY_RATE:,}/s, p50 / p99",
            f"{statistics.median(p50s):.2f} / {statistics.median(p99s):.2f} ms",
            "runs "
            + " / ".join(f"{a:.2f}, {b:.2f}" for a, b in zip(p50s, p99s, strict=True))
            + f"; max {max(max(r.latencies_ms) for r in runs):.1f} ms; target p50 <= "
            f"{TARGET_P50_MS}, p99 <= {TARGET_P99_MS}: {_met(met == n)} in {met}/{n}"
            + (f"; {lost} NEVER ARRIVED" if lost else ""),
        )
    )
    for how in ("empty", "missing"):
        mine = [f for f in firsts if f.how == how]
        if not mine:
            continue
        met = sum(f.first_ms <= TARGET_FIRST_MS for f in mine)
        rows.append(
            Row(
                "cost",
                f"first entry, {how} WAL dir, fsync -> arrival",
                f"{statistics.median(f.first_ms for f in mine):.1f} ms",
                "runs "
                + " / ".join(f"{f.first_ms:.1f}" for f in mine)
                + "; worst of the first second "
                + " / ".join(f"{f.worst_ms:.1f}" for f in mine)
                + f" ms; target <= {TARGET_FIRST_MS:g} ms: {_met(met == len(mine))} "
                f"in {met}/{len(mine)}",
            )
        )
    return rows


def run(quick: bool = False, runs: int | None = None) -> list[Row]:
    runs = runs or (1 if quick else 3)
    window_s = 5.0 if quick else 10.0
    work = Path(tempfile.mkdtemp(prefix="eventsinkd-cost-"))
    try:
        costs: list[CostRun] = []
        firsts: list[FirstRun] = []
        with Receiver(0, record_arrivals=True) as rcv:
            for k in range(runs):
                with stage(f"cost: run {k + 1} of {runs} (idle, {RATES} appends/s)"):
                    costs.append(cost_run(rcv, work / f"run-{k}", window_s))
                for how in ("empty", "missing"):
                    with stage(f"cost: first segment, {how} WAL directory ({k + 1} of {runs})"):
                        firsts.append(first_run(rcv, work / f"first-{how}-{k}", how))
        return rows_for(costs, firsts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 run of 5 s windows")
    ap.add_argument("--runs", type=int, help="runs (default 3, 1 with --quick)")
    args = ap.parse_args(argv)
    print(machine_summary(), flush=True)
    print_table("eventsinkd's cost at Nexus's rates", run(args.quick, args.runs))


if __name__ == "__main__":
    main()
