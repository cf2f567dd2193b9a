"""d. The daemon's CPU% (of one core) with nothing written, and with 1,000 events/s.

The loaded windows run twice: in a fresh WAL directory, then with the directory a
long-running Nexus leaves (many empty segments older than the active one).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import Receiver
from bench.e2e.common import Daemon, new_writer, paced_write, stage, wait_for, wal_files

if TYPE_CHECKING:
    from bench.e2e import Results

LEFTOVER_EMPTY_SEGMENTS = 5_000  # a WAL directory after some rotations


@dataclass(slots=True)
class IdleResult:
    idle_pct: list[float] = field(default_factory=list)
    loaded_pct: list[float] = field(default_factory=list)
    leftover_pct: list[float] = field(default_factory=list)  # same, with leftover segments
    segments: tuple[int, int] = (0, 0)  # before the leftover segments are added
    idle_rss_kib: int = 0
    written: int = 0
    delivered: int = 0
    dropped: int = 0
    write_rate: float = 0.0
    window_s: float = 0.0


def add_leftover_segments(wal: Path, active: str, n: int) -> None:
    """``n`` empty segments named before ``active``: what earlier rotations leave behind
    (Nexus never deletes segments, and pre-creates many that stay empty)."""
    ns = int(active.removeprefix("wal-").removesuffix(".jsonl"))
    for k in range(n, 0, -1):
        fd = os.open(wal / f"wal-{ns - k}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)


def idle_cost(rcv: Receiver, seconds: float, windows: int, rate: float, work: Path) -> IdleResult:
    res = IdleResult(window_s=seconds / windows)
    with Daemon(work / "idle", [{"name": "bench", "url": rcv.url}]).start() as d:
        w = new_writer(d.wal)
        base = rcv.stats()["requests"]

        def delivered_all() -> bool:
            return bool(rcv.stats()["requests"] >= base + res.written)

        warm = paced_write(w, 50, 0.2)  # one connection up, as in a running deployment
        res.written += len(warm.fsynced)
        wait_for(delivered_all, 10, "the warm-up")
        time.sleep(1.0)
        for _ in range(windows):
            pct, _ = d.cpu_pct(lambda: time.sleep(res.window_s))
            res.idle_pct.append(pct)
        res.idle_rss_kib = d.mem_kib()["VmRSS"]
        rates = []
        for _ in range(windows):
            pct, p = d.cpu_pct(lambda: paced_write(w, rate, res.window_s))
            res.loaded_pct.append(pct)
            res.written += len(p.fsynced)
            rates.append(p.rate)
        res.write_rate = statistics.median(rates)
        res.segments = wal_files(d.wal)
        # The same load with the directory a long-running Nexus leaves: many empty segments.
        add_leftover_segments(d.wal, w.active_segment, LEFTOVER_EMPTY_SEGMENTS)
        time.sleep(1.0)
        for _ in range(windows):
            pct, p = d.cpu_pct(lambda: paced_write(w, rate, res.window_s))
            res.leftover_pct.append(pct)
            res.written += len(p.fsynced)
        w.close()
        with contextlib.suppress(RuntimeError):
            wait_for(delivered_all, 10, "deliveries")
        sink = d.sink("bench")
        res.delivered, res.dropped = sink["delivered"], sink["dropped"]
    return res


def measure(res: Results, work: Path) -> None:
    """Idle and loaded CPU% against a 0 ms receiver, into ``res``."""
    s = res.settings
    with Receiver(0) as rcv, stage("idle and 1,000 events/s CPU"):
        res.idle = idle_cost(rcv, s.idle_s, s.idle_windows, s.idle_rate, work)
