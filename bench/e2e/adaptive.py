"""i. Adaptive concurrency: events/s and the concurrency ``auto`` chooses, by receiver latency.

One sink with default settings (``concurrency: auto``, ``max_concurrency`` 128,
``overflow: block``, ``max_inflight`` 1,000) against ``bench/receiver.py`` answering
after 0, 10, 50 and 200 ms; then the 10 ms receiver again with ``order: subject`` and
100 distinct subjects (the writer's entries take subjects ``user:0``..``user:99`` in
turn).

The method is ``throughput``'s: N entries pre-written while the daemon idles, renamed
into its followed WAL directory at once, timed from the first rename to the arrival of
the last webhook. One daemon per cell. A warm-up run first (the controller starts at 4
and grows from there: the warm-up shows where it stands after one run) also sizes N for
a run of about ``Settings.target_s``. During the runs ``/status`` is polled every 50 ms
for the sink's ``concurrency.current``: the median and the range of those samples are
the concurrency shown (what polling costs is in ``transports``: it is small).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import Row
from bench.common import Receiver
from bench.e2e.common import Daemon, prewrite, stage, wait_for
from eventsinkd.config.options import DEFAULT_MAX_CONCURRENCY
from eventsinkd.devtools.sim.entries import EntryMaker

if TYPE_CHECKING:
    from bench.e2e import Results

LATENCIES_MS = (0, 10, 50, 200)
SUBJECTS = 100
SUBJECT_LATENCY_MS = 10
POLL_S = 0.05
MIN_RUN_EVENTS = 200
MAX_RUN_EVENTS = 100_000


@dataclass(slots=True)
class AdRun:
    events: int
    seconds: float
    cpu_s: float
    limits: list[int]  # concurrency.current, sampled every POLL_S

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class AdCell:
    latency_ms: int
    subjects: int = 0  # 0: order none; else order: subject with this many subjects
    events: int = 0
    warm_rate: float = 0.0
    warm_end_limit: int = 0
    runs: list[AdRun] = field(default_factory=list)

    @property
    def label(self) -> str:
        order = f", order: subject, {self.subjects} subjects" if self.subjects else ""
        return f"{self.latency_ms} ms{order}"

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def limits(self) -> list[int]:
        return [x for r in self.runs for x in r.limits]


class ManySubjects(EntryMaker):
    """Entries whose subjects go round ``user:0``..``user:<n-1>``."""

    def __init__(self, base: EntryMaker, n: int) -> None:
        super().__init__(base._rng, base.seed, base.payload_bytes)
        self.n = n

    def data_entry(self, legacy: bool) -> dict[str, Any]:
        entry = super().data_entry(legacy)
        subject = f"user:{(self.data_count - 1) % self.n}"
        entry["subject"] = entry["payload"]["subject"] = subject
        return entry


def _run(d: Daemon, rcv: Receiver, root: Path, n: int, subjects: int, timeout_s: float) -> AdRun:
    staging = root / "stage"
    names = prewrite(staging, n, (lambda base: ManySubjects(base, subjects)) if subjects else None)
    before = rcv.stats()
    want = before["requests"] + n
    limits: list[int] = []
    c0 = d.cpu_s()
    t0 = time.monotonic_ns()
    for name in names:
        os.rename(staging / name, d.wal / name)
    last: dict[str, Any] = before
    next_poll = 0.0

    def done() -> bool:
        nonlocal last, next_poll
        last = rcv.stats()
        if last["requests"] >= want:
            return True
        now = time.monotonic()
        if now >= next_poll:
            d.check_alive()
            limits.append(int(d.sink("bench")["concurrency"]["current"]))
            next_poll = now + POLL_S
        return False

    wait_for(done, timeout_s, f"{n:,} webhooks at the receiver", poll_s=0.01)
    c1 = d.cpu_s()
    if last["received"] - before["received"] != n:
        raise RuntimeError(f"the receiver got {last['received'] - before['received']} of {n}")
    return AdRun(n, (last["last_ns"] - t0) / 1e9, c1 - c0, limits)


def adaptive_cell(rcv: Receiver, subjects: int, runs: int, target_s: float, work: Path) -> AdCell:
    latency = int(rcv.latency_ms)
    cell = AdCell(latency, subjects)
    root = work / f"ad-{latency}ms-s{subjects}"
    sink: dict[str, Any] = {"name": "bench", "url": rcv.url}
    if subjects:
        sink["order"] = "subject"
    with Daemon(root, [sink], overflow="block").start() as d:
        # Enough for a few seconds even at the cap: the default max_concurrency per round trip.
        cap_rate = DEFAULT_MAX_CONCURRENCY / (latency / 1000) if latency else 5_000.0
        n0 = int(min(20_000, max(300, 2 * cap_rate)))
        warm = _run(d, rcv, root, n0, subjects, max(60.0, 20 * n0 / cap_rate))
        cell.warm_rate = warm.rate
        cell.warm_end_limit = int(d.sink("bench")["concurrency"]["current"])
        n = round(warm.rate * target_s, -1)
        cell.events = int(max(MIN_RUN_EVENTS, min(MAX_RUN_EVENTS, n)))
        for _ in range(runs):
            timeout_s = max(60.0, 10 * cell.events / max(warm.rate, 1.0))
            cell.runs.append(_run(d, rcv, root, cell.events, subjects, timeout_s))
        st = d.sink("bench")
        total = n0 + runs * cell.events
        if st["delivered"] != total or st["dropped"] or st["failed"]:
            raise RuntimeError(
                f"{cell.label}: written {total:,}, delivered {st['delivered']:,}, "
                f"dropped {st['dropped']:,}, failed {st['failed']:,}"
            )
    return cell


def measure(res: Results, work: Path) -> None:
    s = res.settings
    for latency in LATENCIES_MS:
        with Receiver(latency) as rcv:
            with stage(f"adaptive concurrency, {latency} ms receiver"):
                res.adaptive.append(adaptive_cell(rcv, 0, s.runs, s.target_s, work))
            if latency == SUBJECT_LATENCY_MS:
                with stage(f"adaptive concurrency, {latency} ms, {SUBJECTS} subjects in order"):
                    res.adaptive.append(adaptive_cell(rcv, SUBJECTS, s.runs, s.target_s, work))


def adaptive_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
    for c in res.adaptive:
        rates = " / ".join(f"{r.rate:,.0f}" for r in c.runs)
        cpu_us = statistics.median(r.cpu_s / r.events for r in c.runs) * 1e6
        limits = c.limits or [0]
        rows.append(
            Row(
                "e2e adaptive concurrency",
                f"{c.label} events/s",
                f"{c.rate:,.0f}",
                f"median of {len(c.runs)} ({rates}) x {c.events:,} ev; warm-up "
                f"{c.warm_rate:,.0f}/s; daemon CPU {cpu_us:,.0f} us/event",
            )
        )
        rows.append(
            Row(
                "e2e adaptive concurrency",
                f"{c.label} concurrency",
                f"{statistics.median(limits):g}",
                f"median of {len(limits)} samples of /status during the runs, range "
                f"{min(limits)}-{max(limits)}; {c.warm_end_limit} after the warm-up run",
            )
        )
    if res.adaptive:
        rows.append(
            Row(
                "e2e adaptive concurrency",
                "method",
                "pre-written",
                "as throughput: WAL pre-written, renamed in at once, timed to the last arrival; "
                "default sink settings (concurrency auto, max_concurrency 128), overflow block, "
                f"max_inflight 1,000; /status polled every {POLL_S * 1000:g} ms",
            )
        )
    return rows
