"""c. Memory with a 1,000,000-entry backlog behind a dead sink.

The backlog is bench/walgen.py's (cached in bench/results/); the sink is a port where nothing
listens. Drop mode runs until the whole WAL is read, block mode until reading pauses (the
queue is full), each within a time bound. The daemon's VmHWM is the kernel's peak; VmRSS is
also sampled every 0.25 s.
"""

from __future__ import annotations

import contextlib
import http.client
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.e2e.common import DEFAULT_MAX_INFLIGHT, Daemon, dead_url, stage
from bench.walgen import cached_wal

if TYPE_CHECKING:
    from bench.e2e import Results


@dataclass(slots=True)
class MemResult:
    mode: str
    max_inflight: int
    entries: int
    lines_read: int = 0
    seconds: float = 0.0
    offered: int = 0
    dropped: int = 0
    held: int = 0
    rss_end_kib: int = 0
    rss_sampled_max_kib: int = 0  # the largest VmRSS seen, sampled every 0.25 s
    hwm_kib: int = 0  # VmHWM: the kernel's peak, between samples too
    finished: bool = False  # drop: read the whole WAL; block: reading paused


def memory_run(
    wal_dir: Path,
    entries: int,
    mode: str,
    max_inflight: int,
    bound_s: float,
    work: Path,
    tag: int = 0,
) -> MemResult:
    res = MemResult(mode, max_inflight, entries)
    root = work / f"mem-{mode}-{max_inflight}-{tag}"
    sinks = [{"name": "dead", "url": dead_url()}]
    d = Daemon(
        root, sinks, wal=wal_dir, overflow=mode, max_inflight=max_inflight, shutdown_timeout_s=0.5
    )
    with d:
        t0 = time.monotonic()
        d.start(wait=False)
        deadline = t0 + bound_s
        last_lines, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            d.check_alive()
            with contextlib.suppress(OSError):
                rss = d.mem_kib()["VmRSS"]
                res.rss_sampled_max_kib = max(res.rss_sampled_max_kib, rss)
            try:
                st = d.status()
            except (OSError, RuntimeError, http.client.HTTPException):
                continue  # not listening yet
            lines = st["reader"]["lines"]
            res.lines_read = lines
            if mode == "drop" and lines > 0 and st["lag"]["bytes_behind"] == 0:
                res.finished = True
                break
            if lines != last_lines:
                last_lines, still_since = lines, time.monotonic()
            elif mode == "block" and lines > 0 and time.monotonic() - still_since >= 2.0:
                res.finished = True  # reading has paused: the queue is full
                break
        res.seconds = time.monotonic() - t0
        mem = d.mem_kib()
        res.rss_end_kib, res.hwm_kib = mem["VmRSS"], mem["VmHWM"]
        res.rss_sampled_max_kib = max(res.rss_sampled_max_kib, res.rss_end_kib)
        sink = d.status()["sinks"]["dead"]
        res.offered, res.dropped, res.held = sink["offered"], sink["dropped"], sink["queue_depth"]
    return res


def measure(res: Results, work: Path) -> None:
    """Drop mode, then block mode, for every max_inflight of the settings, into ``res``."""
    s = res.settings
    wal_dir, info = cached_wal(s.mem_entries)
    res.mem_wal = f"{info.entries:,} entries, {info.bytes / 1e6:,.0f} MB"
    for mode in ("drop", "block"):
        bound = s.mem_drop_bound_s if mode == "drop" else s.mem_block_bound_s
        for mi in s.mem_inflights:
            # The default gets several runs; other sizes one, to show the scaling.
            for i in range(s.runs if mi == DEFAULT_MAX_INFLIGHT else 1):
                with stage(f"memory, {mode} mode, max_inflight {mi:,}, run {i + 1}"):
                    res.memory.append(memory_run(wal_dir, s.mem_entries, mode, mi, bound, work, i))
