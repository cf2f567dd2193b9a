"""h. What status events cost: CPU with and without them, 1,000 appends/s, Nexus-like marking.

One Nexus-like writer appends 1,000 entries/s (one group commit per append) into 1 MiB
segments and, like Nexus storing what it wrote, marks them in batches: every 100 ms it
rewrites the active segment and the one before (temp file + rename), turning every entry
still PENDING there into DELIVERED (1 % into PERMANENT_FAILURE). Four readers follow the
same WAL at the same time, so they see the same writes and the same rewrites:

* the reader alone: ``eventsinkd tail --types memory_written`` and ``--types`` all three,
  bodies to /dev/null;
* the daemon: ``eventsinkd run`` with ``events.types`` left at ``[memory_written]`` and with
  all three, each delivering to its own 0 ms receiver (with status events it delivers about
  twice as many events).

CPU is utime+stime of each process over the same windows, as % of one core.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench import Row, proc_cpu_s
from bench.common import Receiver
from bench.e2e.common import Daemon, stage, wait_for
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

if TYPE_CHECKING:
    from bench.e2e import Results

RATE = 1_000.0  # appends/s, one entry each
MARK_EVERY_S = 0.1
SEGMENT_BYTES = 1 << 20
FAILED = 0.01
ALL = ["memory_written", "memory_persisted", "memory_write_failed"]
PLAIN = ["memory_written"]


@dataclass(slots=True)
class StatusCost:
    window_s: float = 0.0
    tail_plain: list[float] = field(default_factory=list)  # % of one core per window
    tail_all: list[float] = field(default_factory=list)
    daemon_plain: list[float] = field(default_factory=list)
    daemon_all: list[float] = field(default_factory=list)
    written: int = 0
    marks: int = 0  # rewrites made
    delivered_plain: int = 0
    delivered_all: int = 0
    expected_all: int = 0  # memory_written + status events the writer's marks call for


def _tail(wal: Path, types: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "eventsinkd", "tail", str(wal), "--types", ",".join(types)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _write_and_mark(w: NexusWriter, seconds: float) -> tuple[int, int]:
    """RATE appends/s for ``seconds``, marking every MARK_EVERY_S: (entries, rewrites)."""
    start = time.monotonic()
    done = marks = 0
    next_mark = start + MARK_EVERY_S
    total = round(RATE * seconds)
    while done < total:
        now = time.monotonic()
        due = min(total, int((now - start) * RATE) + 1)
        if due > done:
            w.append(due - done)
            done = due
        if now >= next_mark:
            w.rewrite_recent(fraction=1.0, failed=FAILED)
            marks += 2
            next_mark += MARK_EVERY_S
        time.sleep(max(0.0, min(next_mark, start + done / RATE) - time.monotonic()))
    return done, marks


def measure(res: Results, work: Path) -> None:
    s = res.settings
    cost = res.statuses = StatusCost(window_s=s.idle_s / s.idle_windows)
    wal = work / "status-wal"
    wal.mkdir()
    with (
        stage("status events CPU"),
        Receiver(0) as plain_rcv,
        Receiver(0) as all_rcv,
        Daemon(work / "st-plain", [{"name": "b", "url": plain_rcv.url}], wal=wal).start() as plain,
        Daemon(
            work / "st-all", [{"name": "b", "url": all_rcv.url}], wal=wal, types=ALL
        ).start() as every,
    ):
        w = NexusWriter(wal, max_segment_bytes=SEGMENT_BYTES, seed=11)
        tails = {"plain": _tail(wal, PLAIN), "all": _tail(wal, ALL)}
        try:
            _write_and_mark(w, 1.0)  # warm-up: connections up, tails started
            time.sleep(1.0)
            procs = {
                "tail_plain": tails["plain"].pid,
                "tail_all": tails["all"].pid,
                "daemon_plain": plain.pid,
                "daemon_all": every.pid,
            }
            for _ in range(s.idle_windows):
                before = {k: proc_cpu_s(pid) for k, pid in procs.items()}
                t0 = time.monotonic()
                _, marks = _write_and_mark(w, cost.window_s)
                took = time.monotonic() - t0
                cost.marks += marks
                for k, pid in procs.items():
                    getattr(cost, k).append((proc_cpu_s(pid) - before[k]) / took * 100)
            cost.written = len(w.expected_data())
            statuses = [w.status(x) for x in w.expected_data()]
            cost.expected_all = cost.written + sum(st != "PENDING" for st in statuses)
            wait_for(
                lambda: plain_rcv.stats()["requests"] >= cost.written, 30, "the plain deliveries"
            )
            wait_for(
                lambda: all_rcv.stats()["requests"] >= cost.expected_all, 30, "status deliveries"
            )
            cost.delivered_plain = plain_rcv.stats()["requests"]
            cost.delivered_all = all_rcv.stats()["requests"]
        finally:
            for proc in tails.values():
                proc.terminate()
                proc.wait(10)
            w.close()


def status_rows(res: Results) -> list[Row]:
    cost = res.statuses
    if cost is None or not cost.tail_plain:
        return []
    n = len(cost.tail_plain)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} %"

    def each(values: list[float]) -> str:
        return " / ".join(f"{v:.1f}" for v in values)

    what = (
        f"{RATE:,.0f} appends/s, every entry marked within {MARK_EVERY_S * 1000:.0f} ms "
        f"({cost.marks} segment rewrites); % of one core, median of {n} x {cost.window_s:g} s"
    )
    return [
        Row(
            "status events CPU",
            "reader (tail): written / +status",
            f"{cell(cost.tail_plain)} / {cell(cost.tail_all)}",
            f"{what}: without ({each(cost.tail_plain)}), with ({each(cost.tail_all)})",
        ),
        Row(
            "status events CPU",
            "daemon: written / +status",
            f"{cell(cost.daemon_plain)} / {cell(cost.daemon_all)}",
            f"same windows, each to a 0 ms receiver: without ({each(cost.daemon_plain)}), "
            f"with ({each(cost.daemon_all)}); delivered {cost.delivered_plain:,} and "
            f"{cost.delivered_all:,} of {cost.written:,} and {cost.expected_all:,}",
        ),
    ]
