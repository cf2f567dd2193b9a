"""b. Latency from an append's return (its batch's fsync) to the entry's arrival at the receiver.

The WAL is written the way Nexus's group commit writes it (``new_group_commit``): 4 writer
threads at a fixed rate in all, one committer batching what arrives within 500 us into one
write + fsync, 1 MiB segments, and after each batch rotation or, in the last fifth of a
segment, a new empty pre-created file: the file churn of a production WAL (about 90 new files/s
at 500 appends/s, 140 at 1,000). Matched per ``webhook-id``; both sides take
``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every process on Linux). The figures
are percentiles over every entry of every window (not medians of per-window figures).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench import percentile
from bench.common import Receiver
from bench.e2e.common import (
    Daemon,
    Paced,
    new_group_commit,
    paced_group_write,
    stage,
    wait_for,
    wal_files,
)

if TYPE_CHECKING:
    from bench.e2e import Results

LATENCY_RATES = (100, 1_000, 2_000)  # the group-commit writer tops out near 2,300/s here


@dataclass(slots=True)
class LatWindow:
    written: int
    arrived: int
    appends: int  # group-commit batches (fsyncs)
    write_rate: float
    latencies_ms: list[float]
    seconds: float = 0.0

    def pct(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


@dataclass(slots=True)
class LatResult:
    rate: int
    windows: list[LatWindow] = field(default_factory=list)
    dropped: int = 0
    segments: tuple[int, int] = (0, 0)  # segment files in the WAL at the end, empty ones
    files_per_s: float = 0.0  # new segment files per second of writing

    @property
    def latencies_ms(self) -> list[float]:
        """Every entry's latency, all windows pooled."""
        return [v for w in self.windows for v in w.latencies_ms]


def unique_at_least(rcv: Receiver, n: int) -> Callable[[], bool]:
    """Whether ``n`` distinct webhook-ids have arrived at ``rcv``."""
    return lambda: bool(rcv.stats()["unique"] >= n)


def fsync_to_arrival_ms(p: Paced, arrivals: dict[str, int]) -> list[float]:
    """For each entry of ``p`` that arrived: its fsync to its arrival, in ms."""
    return [(arrivals[k] - t) / 1e6 for k, t in p.fsynced.items() if k in arrivals]


def latency_rate(rcv: Receiver, rate: int, windows: int, window_s: float, work: Path) -> LatResult:
    res = LatResult(rate)
    root = work / f"lat-{rate}"
    with Daemon(root, [{"name": "bench", "url": rcv.url}]).start() as d:
        commit = new_group_commit(d.wal)
        base = rcv.stats()["unique"]
        warm = paced_group_write(commit, 50, 0.4)  # warm-up: the first connections, the watcher
        wait_for(unique_at_least(rcv, base + len(warm.fsynced)), 10, "the warm-up")
        files_before = wal_files(d.wal)[0]
        runs: list[Paced] = []
        for _ in range(windows):
            p = paced_group_write(commit, rate, window_s)
            runs.append(p)
            target = base + len(warm.fsynced) + sum(len(r.fsynced) for r in runs)
            with contextlib.suppress(RuntimeError):
                wait_for(unique_at_least(rcv, target), 5.0, "the last arrivals")
            time.sleep(0.2)
        commit.close()
        res.dropped = d.sink("bench")["dropped"]
        res.segments = wal_files(d.wal)
        res.files_per_s = (res.segments[0] - files_before) / sum(p.seconds for p in runs)
    arrivals: dict[str, int] = rcv.stats(arrivals=True)["arrivals"]
    for p in runs:
        lat = fsync_to_arrival_ms(p, arrivals)
        res.windows.append(
            LatWindow(len(p.fsynced), len(lat), p.appends, p.rate, lat, seconds=p.seconds)
        )
    return res


def measure(res: Results, work: Path) -> None:
    """Every rate in turn, against one receiver that records arrivals, into ``res``."""
    s = res.settings
    with Receiver(0, record_arrivals=True) as rcv:
        for rate in LATENCY_RATES:
            with stage(f"latency at {rate:,} appends/s"):
                res.latencies.append(latency_rate(rcv, rate, s.lat_windows, s.lat_window_s, work))
