"""a. Throughput: a pre-written WAL handed to the daemon at once, timed to the receiver.

The writer pre-writes the WAL as fast as it can (group commits of 100 entries) into a staging
directory while the daemon idles, then its segments are renamed into the daemon's (followed,
initially empty) WAL directory all at once: each run measures catch-up + delivery, from the
first rename to the arrival of the last webhook at the receiver, without the daemon's
start-up. ``overflow: block`` (default ``max_inflight`` 1,000), so nothing can be dropped;
delivered must equal written. One daemon per cell; a warm-up run sizes N so a run lasts about
``--seconds``. Before the cells, the receiver alone under the load generator.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import CONCURRENCIES, LATENCIES_MS
from bench.common import Receiver, load_receiver
from bench.e2e.common import Daemon, prewrite, stage, wait_for

if TYPE_CHECKING:
    from bench.e2e import Results

MAX_RUN_EVENTS = 100_000
MIN_RUN_EVENTS = 100


@dataclass(slots=True)
class TpRun:
    events: int
    seconds: float  # first rename -> arrival of the last webhook
    cpu_s: float  # the daemon's utime+stime over the run
    receiver_cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / self.events * 1000


@dataclass(slots=True)
class TpCell:
    latency_ms: int
    concurrency: int
    events: int = 0
    runs: list[TpRun] = field(default_factory=list)
    written: int = 0
    delivered: int = 0
    received: int = 0
    hwm_kib: int = 0
    loop: str = "?"

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def cpu_per_1k(self) -> float:
        return statistics.median(r.cpu_per_1k for r in self.runs)

    @property
    def receiver_busy(self) -> float:
        return statistics.median(r.receiver_cpu_s / r.seconds for r in self.runs)


def feed(d: Daemon, rcv: Receiver, root: Path, n: int, timeout_s: float) -> TpRun:
    """Pre-write ``n`` entries, hand them to the daemon at once, time them to the receiver."""
    staging = root / "stage"
    names = prewrite(staging, n)
    before = rcv.stats()
    want = before["received"] + n
    c0 = d.cpu_s()
    t0 = time.monotonic_ns()
    for name in names:
        os.rename(staging / name, d.wal / name)
    last: dict[str, Any] = before

    def done() -> bool:
        nonlocal last
        last = rcv.stats()
        if last["requests"] < want:
            d.check_alive()
        return bool(last["requests"] >= want)

    wait_for(done, timeout_s, f"{n:,} webhooks at the receiver")
    c1 = d.cpu_s()
    if last["received"] != want:
        raise RuntimeError(f"the receiver got {last['received'] - before['received']} of {n}")
    return TpRun(n, (last["last_ns"] - t0) / 1e9, c1 - c0, last["cpu_s"] - before["cpu_s"])


def throughput_cell(
    rcv: Receiver,
    concurrency: int | None,
    runs: int,
    target_s: float,
    work: Path,
    around: Callable[[], object] | None = None,
) -> TpCell:
    """One cell; ``concurrency`` None leaves the sink at its default (reported as 0).

    ``around`` runs before each timed run and after the last (the daemon idle meanwhile):
    a comparison measured on both sides of every run, as the machine's speed drifts."""
    latency = int(rcv.latency_ms)
    cell = TpCell(latency, concurrency or 0)
    root = work / f"tp-{latency}ms-c{concurrency or 'default'}"
    sink: dict[str, Any] = {"name": "bench", "url": rcv.url}
    if concurrency is not None:
        sink["concurrency"] = concurrency
    sinks = [sink]
    with Daemon(root, sinks, overflow="block").start() as d:
        cell.loop = d.loop()
        # Warm-up (connections, caches) that also sizes N for a run of about target_s.
        n0 = 3_000 if latency == 0 else 60 * (concurrency or 64)
        warm = feed(d, rcv, root, n0, 60.0)
        cell.written += n0
        n = round(warm.rate * target_s, -1)
        cell.events = int(max(MIN_RUN_EVENTS, min(MAX_RUN_EVENTS, n)))
        for _ in range(runs):
            if around is not None:
                around()
            timeout_s = max(30.0, 5 * cell.events / max(warm.rate, 1.0))
            cell.runs.append(feed(d, rcv, root, cell.events, timeout_s))
            cell.written += cell.events
        if around is not None:
            around()
        time.sleep(0.3)
        sink = d.sink("bench")
        cell.delivered = sink["delivered"]
        cell.hwm_kib = d.mem_kib()["VmHWM"]
        if sink["delivered"] != cell.written or sink["dropped"] or sink["failed"]:
            raise RuntimeError(
                f"{latency} ms, concurrency {concurrency}: written {cell.written:,}, delivered "
                f"{sink['delivered']:,}, dropped {sink['dropped']:,}, failed {sink['failed']:,}"
            )
    return cell


def measure(res: Results, work: Path) -> None:
    """The receiver alone, then every (latency, concurrency) cell, into ``res``."""
    s = res.settings
    for latency in LATENCIES_MS:
        with Receiver(latency) as rcv:
            with stage(f"receiver alone, {latency} ms"):
                res.capacities[latency] = load_receiver(rcv, 64, s.load_s, uvloop=True)
            for conc in CONCURRENCIES:
                with stage(f"throughput, {latency} ms receiver, concurrency {conc}"):
                    cell = throughput_cell(rcv, conc, s.runs, s.target_s, work)
                res.cells.append(cell)
                res.loop = cell.loop
