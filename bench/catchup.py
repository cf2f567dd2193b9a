"""Catch-up throughput and memory: read a whole WAL from the beginning, as fast as possible.

Each measurement runs in a fresh subprocess so that its peak RSS (VmHWM) is its own:

* ``reader``: the real reader, ``WalFollower(follow=False, start="beginning")``, consuming
  every batch and printing nothing;
* ``plain``: the floor to compare with, a plain loop that splits lines, checks the CRC-32
  with zlib.crc32 and decodes the JSON with orjson.loads.

The page cache is warm (the WAL was just generated or read), so this measures CPU, not disk.

    python -m bench.catchup --entries 1000000 --small 100000
    python -m bench.catchup --entries 100000 --profile   # where the reader spends its time
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from bench import Row, print_table, proc_status_kib
from bench.walgen import cached_wal

TARGET_ENTRIES_PER_S = 100_000
CHILD_TIMEOUT_S = 170.0
START = b"BFBFBFBFBFBFBFBF"


def _vm_kib(field: str) -> int:
    """``field`` of this process's /proc/self/status in KiB, -1 if unreadable."""
    try:
        return proc_status_kib("self", (field,))[field]
    except (OSError, ValueError):
        return -1


async def _read_with_follower(wal_dir: Path, batch_lines: int | None) -> tuple[int, int]:
    from eventsinkd.wal.follower import WalFollower
    from eventsinkd.wal.lines import LineParser

    if batch_lines is None:  # the default, whatever it is
        follower = WalFollower(wal_dir, LineParser(), start="beginning", follow=False)
    else:
        follower = WalFollower(
            wal_dir, LineParser(), start="beginning", follow=False, batch_lines=batch_lines
        )
    records = 0
    async for batch in follower:
        records += len(batch.records)
    return records, follower.scanner.stats.lines


def read_with_follower(wal_dir: Path, batch_lines: int | None = None) -> tuple[int, int]:
    """(entries yielded, lines read) through the real reader."""
    return asyncio.run(_read_with_follower(wal_dir, batch_lines))


def read_plain(wal_dir: Path, batch_lines: int | None = None) -> tuple[int, int]:
    """(entries decoded, lines read) by the simplest loop that still checks every line."""
    import orjson

    entries = lines = 0
    for name in sorted(os.listdir(wal_dir)):
        if not (name.startswith("wal-") and name.endswith(".jsonl")):
            continue
        with open(wal_dir / name, "rb", buffering=0) as fh:
            tail = b""
            while chunk := fh.read(1 << 20):
                data = tail + chunk
                nl = data.rfind(b"\n")
                tail = data[nl + 1 :]
                for line in data[:nl].split(b"\n") if nl >= 0 else ():
                    lines += 1
                    fields = line.split(b"\t")
                    if fields[0] == START:
                        fields = fields[1:-1]
                    if len(fields) < 2 or b"%08x" % zlib.crc32(fields[0]) != fields[1]:
                        continue
                    orjson.loads(fields[0])
                    entries += 1
    return entries, lines


MODES = {"reader": read_with_follower, "plain": read_plain}


def child(mode: str, wal_dir: Path, batch_lines: int | None) -> None:
    """Run one measurement and print it as JSON (the subprocess side)."""
    import orjson  # noqa: F401 - imported before the baseline RSS is taken

    import eventsinkd.wal.follower  # noqa: F401

    rss_before = _vm_kib("VmRSS")
    cpu_started = time.process_time()
    started = time.perf_counter()
    entries, lines = MODES[mode](wal_dir, batch_lines)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    out = {
        "mode": mode,
        "entries": entries,
        "lines": lines,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "rss_before_kib": rss_before,
        "hwm_kib": _vm_kib("VmHWM"),
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(out), flush=True)


@dataclass(slots=True)
class Run:
    entries: int
    lines: int
    seconds: float
    cpu_seconds: float
    rss_before_kib: int
    hwm_kib: int

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.entries / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def run_child(
    mode: str, wal_dir: Path, timeout_s: float = CHILD_TIMEOUT_S, batch_lines: int | None = None
) -> Run:
    cmd = [sys.executable, "-m", "bench.catchup", "--child", mode, "--wal", str(wal_dir)]
    if batch_lines is not None:
        cmd += ["--batch-lines", str(batch_lines)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return Run(
        doc["entries"],
        doc["lines"],
        doc["seconds"],
        doc["cpu_seconds"],
        doc["rss_before_kib"],
        doc["hwm_kib"],
    )


def measure(
    mode: str,
    wal_dir: Path,
    runs: int,
    expected: int,
    budget_s: float,
    batch_lines: int | None = None,
) -> list[Run]:
    """Up to ``runs`` runs (fewer once ``budget_s`` is spent); checks every entry came out."""
    done: list[Run] = []
    started = time.monotonic()
    for _ in range(runs):
        remaining = budget_s - (time.monotonic() - started)
        if done and remaining < done[-1].seconds * 1.5:
            break
        timeout_s = min(CHILD_TIMEOUT_S, max(remaining, 30.0))
        run = run_child(mode, wal_dir, timeout_s, batch_lines)
        if run.entries != expected:
            raise RuntimeError(f"{mode}: read {run.entries:,} entries, expected {expected:,}")
        done.append(run)
    return done


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def _read_with_scanner(wal_dir: Path) -> None:
    from eventsinkd.wal.lines import LineParser
    from eventsinkd.wal.scanner import WalScanner

    scanner = WalScanner(wal_dir, LineParser(), "beginning")
    try:
        while scanner.step() is not None or not scanner.at_end:
            pass
    finally:
        scanner.close()


def profile(wal_dir: Path, top: int = 15) -> str:
    """cProfile of the reading over ``wal_dir``: the top functions by own time.

    The scanner's steps, run here: the follower runs them in its reader thread, and a
    profile of this thread would show only the event loop waiting for it."""
    prof = cProfile.Profile()
    prof.enable()
    _read_with_scanner(wal_dir)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def profile_in_child(wal_dir: Path) -> str:
    cmd = [sys.executable, "-m", "bench.catchup", "--profile", "--wal", str(wal_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    return proc.stdout if proc.returncode == 0 else proc.stderr


def run(
    entries: int = 1_000_000,
    small: int | None = 100_000,
    runs: int = 3,
    *,
    budget_s: float = 160.0,
    profile_if_slow: bool = True,
) -> list[Row]:
    """Measure the real reader and the plain loop; returns the table rows."""
    started = time.monotonic()
    rows: list[Row] = []
    sizes = [entries] + ([small] if small and small != entries else [])
    big_rate = 0.0
    profiled_dir: Path | None = None
    for n, size in enumerate(sizes):
        wal_dir, info = cached_wal(size)
        profiled_dir = wal_dir
        left = max(30.0, budget_s - (time.monotonic() - started))
        # The big WAL gets most of the budget: the reader first, then the baseline.
        reader_budget = left * (0.6 if n == 0 else 0.5)
        reader = measure("reader", wal_dir, runs, size, reader_budget)
        plain_budget = max(20.0, budget_s - (time.monotonic() - started)) * (0.6 if n == 0 else 1)
        plain = measure("plain", wal_dir, runs if n == 0 else 1, size, plain_budget)
        rate = statistics.median(r.rate for r in reader)
        plain_rate = statistics.median(r.rate for r in plain)
        if n == 0:
            big_rate = rate
        label = f"catchup {size:,}"
        wal = f"{info.bytes / 1e6:,.0f} MB, {info.data_segments} data + "
        wal += f"{info.segments - info.data_segments} empty segments"
        rates = ", ".join(f"{r.rate:,.0f}" for r in reader)
        cpu_rate = statistics.median(r.cpu_rate for r in reader)
        rows += [
            Row(
                label,
                "reader entries/s",
                f"{rate:,.0f}",
                f"median of {len(reader)}: {rates}; {cpu_rate:,.0f} per CPU-second",
            ),
            Row(
                label,
                "reader MB/s",
                f"{rate * info.bytes / size / 1e6:,.0f}",
                f"{wal}; {statistics.median(r.seconds for r in reader):.2f} s per pass",
            ),
            Row(
                label,
                "reader peak RSS",
                _mib(max(r.hwm_kib for r in reader)),
                f"VmHWM; {_mib(reader[0].rss_before_kib)} after imports, before reading",
            ),
            Row(
                label,
                "plain loop lines/s",
                f"{plain_rate:,.0f}",
                f"split+crc32+orjson.loads, median of {len(plain)}; "
                f"reader is {rate / plain_rate:.0%} of it",
            ),
            Row(label, "plain loop peak RSS", _mib(max(r.hwm_kib for r in plain)), "VmHWM"),
        ]
    verdict = "meets" if big_rate >= TARGET_ENTRIES_PER_S else "BELOW"
    rows.append(
        Row("catchup", "target", f"{TARGET_ENTRIES_PER_S:,}", f"reader {verdict} the target")
    )
    if profile_if_slow and big_rate < TARGET_ENTRIES_PER_S * 0.9 and profiled_dir is not None:
        print(f"\nreader below {TARGET_ENTRIES_PER_S:,} entries/s; cProfile over {profiled_dir}:")
        print(profile_in_child(profiled_dir))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.catchup")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000, help="second size (0: none)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--budget", type=float, default=160.0, help="seconds for all runs")
    ap.add_argument("--profile", action="store_true", help="cProfile the reader over --wal")
    ap.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--wal", type=Path, help="an existing WAL directory (with --child/--profile)")
    ap.add_argument("--batch-lines", type=int, help="WalFollower batch_lines (with --child)")
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.wal, args.batch_lines)
        return
    if args.profile:
        wal_dir = args.wal if args.wal is not None else cached_wal(args.entries)[0]
        print(profile(wal_dir))
        return
    started = time.monotonic()
    rows = run(args.entries, args.small or None, args.runs, budget_s=args.budget)
    print_table(f"catchup ({time.monotonic() - started:.0f} s)", rows)


if __name__ == "__main__":
    main()
