"""Benchmarks for eventsinkd: the WAL reader, the delivery engine, and the real daemon end to end.

``python -m bench`` runs them all (not the soak test) and prints one table; each module also
runs alone (``python -m bench.catchup``, ``python -m bench.follow_latency``,
``python -m bench.delivery``, ``python -m bench.e2e``, ``python -m bench.walgen``,
``python -m bench.soak``). Generated WALs are cached under ``bench/results/`` (git-ignored).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(slots=True, frozen=True)
class Row:
    """One line of a results table."""

    benchmark: str
    measure: str
    value: str
    detail: str = ""


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


def machine_summary() -> str:
    py = f"{platform.python_implementation()} {platform.python_version()}"
    return f"nproc={nproc()}  cpu={cpu_model()}  python={py}  kernel={platform.release()}"


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


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (which must not be empty)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


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
