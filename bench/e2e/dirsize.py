"""j. The daemon's cost against the WAL directory's size (issue 11).

Nexus never deletes segments, and its group commit leaves a new, mostly empty, file for
many batches: a directory holds millions of files after a day. Two figures:

* CPU: the daemon's CPU% (of one core) while Nexus's group commit (``new_group_commit``: 4
  writers, 1 MiB segments, about 90 new files/s) appends 500 entries/s, with the daemon started
  on an empty WAL directory and on one holding ``LEFTOVER`` empty segments older than the
  active one (what a long-running Nexus leaves), one daemon each, alternately, ``runs`` times.
  The target: the leftover segments add at most 10 points.
* Start: the daemon started (``start_at: end``, the default) on a directory of
  ``START_FILES`` files (empty leftover segments, then a few that hold data): the seconds from
  the process's start to ``/readyz`` answering 200, the daemon's CPU seconds and peak RSS by
  then, and the time from an append made then to its arrival. The target: ready within
  10 s.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import Receiver
from bench.e2e.common import (
    Daemon,
    new_group_commit,
    paced_group_write,
    stage,
    wait_for,
    wal_files,
)
from bench.e2e.latency import unique_at_least

if TYPE_CHECKING:
    from bench.e2e import Results

LEFTOVER = 200_000
START_FILES = 1_000_000
RATE = 500
READY_BOUND_S = 120.0
# Leftover segments are named this long before now: older than every segment written after.
LEFTOVER_BEFORE_NS = 10**12


@dataclass(slots=True)
class CpuRun:
    leftover: int  # empty segments in the directory when the daemon started
    pct: list[float] = field(default_factory=list)  # CPU% per window
    written: int = 0
    delivered: int = 0
    files: int = 0  # segment files at the end


@dataclass(slots=True)
class StartResult:
    files: int  # segment files when the daemon started
    ready_s: float  # process start to /readyz 200
    cpu_s: float  # the daemon's CPU time by then
    hwm_kib: int  # its peak RSS by then
    arrival_s: float  # an append right after ready, to its arrival


@dataclass(slots=True)
class DirSizeResult:
    window_s: float
    runs: list[CpuRun] = field(default_factory=list)
    start: StartResult | None = None

    def median_pct(self, leftover: bool) -> float:
        pcts = [p for r in self.runs if bool(r.leftover) == leftover for p in r.pct]
        return statistics.median(pcts) if pcts else 0.0


def add_empty_segments(wal: Path, n: int) -> None:
    """``n`` empty segments named well before now (older than anything written after)."""
    wal.mkdir(mode=0o700, parents=True, exist_ok=True)
    first = time.time_ns() - LEFTOVER_BEFORE_NS
    for k in range(n):
        fd = os.open(wal / f"wal-{first + k}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)


def cpu_run(rcv: Receiver, leftover: int, windows: int, window_s: float, root: Path) -> CpuRun:
    run = CpuRun(leftover)
    d = Daemon(root, [{"name": "bench", "url": rcv.url}])
    add_empty_segments(d.wal, leftover)
    with d.start():
        commit = new_group_commit(d.wal)
        base = rcv.stats()["unique"]
        warm = paced_group_write(commit, RATE, 1.0)  # the reader past the leftovers, warm
        run.written += len(warm.fsynced)
        wait_for(unique_at_least(rcv, base + run.written), 60, "the warm-up")
        time.sleep(0.5)
        for _ in range(windows):
            pct, p = d.cpu_pct(lambda: paced_group_write(commit, RATE, window_s))
            run.pct.append(pct)
            run.written += len(p.fsynced)
        commit.close()
        wait_for(unique_at_least(rcv, base + run.written), 30, "the last arrivals")
        run.delivered = rcv.stats()["unique"] - base
        run.files = wal_files(d.wal)[0]
    shutil.rmtree(root, ignore_errors=True)
    return run


def start_with(rcv: Receiver, files: int, root: Path) -> StartResult:
    d = Daemon(root, [{"name": "bench", "url": rcv.url}])
    d.write_config([{"name": "bench", "url": rcv.url}], wal={"start_at": "end"})
    commit = new_group_commit(d.wal)
    paced_group_write(commit, RATE, 2.0)  # segments with data, and pre-created ones
    have = wal_files(d.wal)[0]
    add_empty_segments(d.wal, max(0, files - have))
    total = wal_files(d.wal)[0]
    with d:
        started = time.monotonic()
        d.start(wait=False)
        while not d.ready(timeout_s=5.0):
            d.check_alive()
            if time.monotonic() - started > READY_BOUND_S:
                raise RuntimeError(f"not ready after {READY_BOUND_S:g} s")
            time.sleep(0.02)
        ready_s = time.monotonic() - started
        cpu_s = d.cpu_s()
        hwm = d.mem_kib()["VmHWM"]
        base = rcv.stats()["unique"]
        appended = time.monotonic()
        commit.append()
        wait_for(unique_at_least(rcv, base + 1), 60, "the first arrival", poll_s=0.002)
        arrival_s = time.monotonic() - appended
        commit.close()
    shutil.rmtree(root, ignore_errors=True)
    return StartResult(total, ready_s, cpu_s, hwm, arrival_s)


def measure(res: Results, work: Path) -> None:
    """The CPU runs (alternating, ``runs`` of each) and the start, into ``res``."""
    s = res.settings
    out = res.dirsize = DirSizeResult(s.dir_window_s)
    with Receiver(0, record_arrivals=True) as rcv:
        for i in range(s.runs):
            order = (0, LEFTOVER) if i % 2 == 0 else (LEFTOVER, 0)
            for leftover in order:
                with stage(f"dirsize: CPU at {RATE}/s, {leftover:,} leftover segments"):
                    root = work / f"dirsize-{i}-{leftover}"
                    out.runs.append(cpu_run(rcv, leftover, s.dir_windows, s.dir_window_s, root))
        with stage(f"dirsize: start with {START_FILES:,} files"):
            out.start = start_with(rcv, START_FILES, work / "dirsize-start")
