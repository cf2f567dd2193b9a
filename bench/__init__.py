"""Benchmarks for eventsinkd: the WAL reader, the delivery engine, and the real daemon end to end.

``python -m bench`` runs them all (not the soak test) and prints one table; each module also
runs alone (``python -m bench.catchup``, ``python -m bench.follow_latency``,
``python -m bench.cost``, ``python -m bench.delivery``, ``python -m bench.stages``,
``python -m bench.e2e``, ``python -m bench.walgen``, ``python -m bench.soak``). Generated
WALs are cached under ``bench/results/`` (git-ignored).

This module holds what every benchmark shares and that is cheap to import (the catch-up
child measures its RSS after importing it): the machine's description, the /proc readers,
the CPU accounting, medians and percentiles, progress lines and the results table.
``bench.common`` holds the 127.0.0.1 plumbing (ports, the receiver child process).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")

# Nexus v0.1.2 internal/eventsink, one event at a time, measured on this machine type: events/s
# by receiver latency (ms). The delivery and end-to-end benchmarks measure the same grid.
NEXUS_EVENTS_PER_S = {0: 7_800.0, 10: 93.0}
LATENCIES_MS = (0, 10)
CONCURRENCIES = (1, 8, 64)


@dataclass(slots=True, frozen=True)
class Row:
    """One line of a results table."""

    benchmark: str
    measure: str
    value: str
    detail: str = ""


# -- the machine -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def code_version() -> str:
    """The commit measured, ``+changes`` when the code or the benchmarks differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "eventsinkd", "bench"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if changes else "")


def machine_summary() -> str:
    py = f"{platform.python_implementation()} {platform.python_version()}"
    return (
        f"nproc={nproc()}  cpu={cpu_model()}  python={py}  kernel={platform.release()}  "
        f"commit={code_version()}"
    )


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts), for the fsync figures."""
    best, fstype = "", "unknown"
    target = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1]
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


# -- processes, from /proc -------------------------------------------------------------


def proc_cpu_s(pid: int | str = "self") -> float:
    """utime + stime of ``pid`` in seconds (``/proc/<pid>/stat``, clock ticks)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(
    pid: int | str = "self", keys: Iterable[str] = ("VmRSS", "VmHWM")
) -> dict[str, int]:
    """Memory figures of ``pid`` in KiB from ``/proc/<pid>/status`` (-1 for any missing)."""
    out = dict.fromkeys(keys, -1)
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1])
    return out


def machine_busy_s() -> float | None:
    """CPU seconds all processes have run since boot (/proc/stat), or None if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:3]) / CLK_TCK  # user + nice + system (not irq, softirq, steal, idle)


def own_cpu_s() -> float:
    """CPU seconds of this process and its (waited-for) children: receivers, load generators."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass(slots=True, frozen=True)
class CpuUse:
    """What a benchmark used, and what the rest of the machine used meanwhile."""

    seconds: float  # wall time
    own_s: float  # this process and its waited-for children
    other_s: float | None  # every other process; None when /proc/stat is unreadable

    @property
    def available_s(self) -> float:
        return self.seconds * nproc()


class CpuMeter:
    """Started on creation; ``read()`` gives the CPU used since then, by us and by the others
    (other work on the machine skews the figures)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._busy = machine_busy_s()
        self._own = own_cpu_s()

    def read(self) -> CpuUse:
        seconds = time.monotonic() - self.started
        busy, own = machine_busy_s(), own_cpu_s() - self._own
        other = None
        if self._busy is not None and busy is not None:
            other = max(0.0, busy - self._busy - own)
        return CpuUse(seconds, own, other)


# -- figures ---------------------------------------------------------------------------


def median_of(items: Iterable[T], fn: Callable[[T], float]) -> float:
    """The median of ``fn`` over ``items`` (which must not be empty)."""
    return statistics.median(fn(x) for x in items)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (which must not be empty)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- output ----------------------------------------------------------------------------


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Progress on stderr: ``... name`` and, when it is over, how long it took."""
    started = time.monotonic()
    print(f"... {name}", end="", flush=True, file=sys.stderr)
    try:
        yield
    finally:
        print(f" ({time.monotonic() - started:.1f} s)", flush=True, file=sys.stderr)


def format_table(rows: list[Row]) -> str:
    headers = ("benchmark", "measure", "value", "detail")
    cells = [headers, *((r.benchmark, r.measure, r.value, r.detail) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = []
    for n, c in enumerate(cells):
        lines.append(
            f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]}".rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n== {title}")
    print(machine_summary())
    print(format_table(rows))
    sys.stdout.flush()
