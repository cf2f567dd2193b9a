"""e. A 2,000-event burst against a receiver that never answers.

Default ``max_inflight`` 1,000: how many events are dropped in drop mode and in block mode
(Nexus's own notifier drops half).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Receiver
from bench.e2e.common import Daemon, stage, wait_for, write_fast

if TYPE_CHECKING:
    from bench.e2e import Results

NEXUS_BURST = 2_000  # Nexus drops half of it with its default queue of 1,000
NEVER_MS = 3_600_000.0  # a receiver "latency" that outlasts every run: it never answers
MODES = ("drop", "block")


@dataclass(slots=True)
class BurstResult:
    mode: str
    offered: int
    dropped: int
    held: int
    lines_read: int


def median_dropped(results: list[BurstResult]) -> float:
    return statistics.median(b.dropped for b in results)


def burst(rcv: Receiver, mode: str, n: int, work: Path, tag: int) -> BurstResult:
    root = work / f"burst-{mode}-{tag}"
    sinks = [{"name": "blocked", "url": rcv.url}]
    with Daemon(root, sinks, overflow=mode, shutdown_timeout_s=0.5).start() as d:
        write_fast(d.wal, n)
        st: dict[str, Any] = {}
        seen: list[int] = []

        def settled() -> bool:
            nonlocal st
            st = d.status()
            sink = st["sinks"]["blocked"]
            if mode == "drop":
                return bool(sink["offered"] >= n and st["lag"]["bytes_behind"] == 0)
            seen.append(st["reader"]["lines"])  # block: reading paused for 1 s
            return len(seen) > 10 and seen[-1] == seen[-11] and sink["queue_depth"] > 0

        wait_for(settled, 20.0, f"the {mode}-mode daemon to settle", poll_s=0.1)
        sink = st["sinks"]["blocked"]
        return BurstResult(
            mode, sink["offered"], sink["dropped"], sink["queue_depth"], st["reader"]["lines"]
        )


def measure(res: Results, work: Path) -> None:
    """The burst in drop mode, then in block mode, each ``runs`` times, into ``res``."""
    with Receiver(NEVER_MS) as rcv:
        for mode in MODES:
            with stage(f"{NEXUS_BURST:,}-event burst, blocked receiver, {mode} mode"):
                res.bursts[mode] = [
                    burst(rcv, mode, NEXUS_BURST, work, i) for i in range(res.settings.runs)
                ]
