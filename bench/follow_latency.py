"""Follow latency: how long after Nexus's fsync does the reader yield an entry?

A writer subprocess (standing in for Nexus) appends sentinel lines of about 1.5 KB at
a fixed rate, each with write() + fsync(), and records the time right after each
fsync. By default it makes the files Nexus's group commit makes: segments of
``SEGMENT_LINES`` lines (1 MiB), and in the last fifth of each a new empty file
after every append (``--no-churn``: one segment, no other file). The reader,
``WalFollower(follow=True)`` in this process, records the time each batch is
yielded. Latency = yield time - fsync time, per entry (matched by
``monotonic_seq``). Both sides use ``time.monotonic_ns()``: on Linux that is
CLOCK_MONOTONIC, one clock for every process on the machine (and it does not jump
when NTP steps the wall clock). A line is in the page cache, and so readable, as soon
as write() returns: an entry can be yielded before the writer's fsync returns, which
shows as a negative latency (the share of those is reported).

Runs with the default wakeups (watchfiles/inotify, with the poll timer behind it) and
with ``force_polling=True`` (only the poll timer, ``poll_interval_s`` = 0.5 s by default).
Each mode runs ``--runs`` times (a fresh WAL and reader each time); the percentiles are
over every entry of every run (each run's are listed too).

    python -m bench.follow_latency --duration 10 --rate 1000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import Row, filesystem_of, median_of, percentile, print_table
from bench.walgen import BASE_NS, LineFactory, segment_name

WARMUP_S = 0.5  # let the watcher settle before the first append
GRACE_S = 3.0  # how long to wait for the last entries after the writer stops
SEGMENT_LINES = 670  # 1 MiB of 1.5 KB lines: Nexus's smallest max_segment_size_mb


def _open_segment(wal_dir: Path) -> int:
    path = wal_dir / segment_name(time.time_ns())
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def writer(wal_dir: Path, times_file: Path, rate: float, duration_s: float, churn: bool) -> None:
    """The writer subprocess: appends ``rate`` lines/s for ``duration_s``, fsync after each;
    with ``churn``, rotation and pre-created empty files as Nexus's group commit makes them."""
    factory = LineFactory()
    count = int(rate * duration_s)
    fd = _open_segment(wal_dir)
    dir_fd = os.open(wal_dir, os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)
    in_segment = 0
    fsynced: list[int] = []
    fsync_ns: list[int] = []
    interval_ns = int(1e9 / rate)
    start = time.monotonic_ns()
    try:
        for i in range(count):
            line = factory.line(i, BASE_NS + i * interval_ns)
            due = start + i * interval_ns
            wait = due - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            before = time.monotonic_ns()
            os.write(fd, line)
            os.fsync(fd)
            after = time.monotonic_ns()
            fsynced.append(after)
            fsync_ns.append(after - before)
            in_segment += 1
            if churn and in_segment >= SEGMENT_LINES:  # rotation, right after the append
                os.close(fd)
                fd = _open_segment(wal_dir)
                in_segment = 0
            elif churn and in_segment >= 0.8 * SEGMENT_LINES:  # a pre-created, empty file
                os.close(_open_segment(wal_dir))
    finally:
        os.close(fd)
    elapsed = (time.monotonic_ns() - start) / 1e9
    times_file.write_text(json.dumps({"fsynced": fsynced, "write_fsync_ns": fsync_ns}))
    print(json.dumps({"count": len(fsynced), "seconds": elapsed}), flush=True)


@dataclass(slots=True)
class Result:
    mode: str
    written: int
    received: int
    write_rate: float
    latencies_ms: list[float]
    fsync_ms: list[float]
    batches: int


async def measure(
    mode: str,
    rate: float,
    duration_s: float,
    work_dir: Path,
    poll_interval_s: float,
    churn: bool = True,
) -> Result:
    from eventsinkd.wal.follower import WalFollower
    from eventsinkd.wal.lines import LineParser

    wal_dir = work_dir / f"wal-{mode}"
    wal_dir.mkdir(mode=0o700)
    times_file = work_dir / f"times-{mode}.json"
    follower = WalFollower(
        wal_dir,
        LineParser(),
        start="beginning",
        follow=True,
        force_polling=mode == "polling",
        poll_interval_s=poll_interval_s,
    )
    received: dict[int, int] = {}
    progress = asyncio.Event()
    batches = 0

    async def consume() -> None:
        nonlocal batches
        async for batch in follower:
            now = time.monotonic_ns()
            if batch.records:
                batches += 1
            for rec in batch.records:
                received[rec.entry.monotonic_seq] = now
            progress.set()

    reader = asyncio.create_task(consume())
    await asyncio.sleep(WARMUP_S)
    cmd = [sys.executable, "-m", "bench.follow_latency", "--writer", "--wal", str(wal_dir)]
    cmd += ["--times", str(times_file), "--rate", str(rate), "--duration", str(duration_s)]
    cmd += [] if churn else ["--no-churn"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=duration_s * 3 + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"writer failed with exit code {proc.returncode}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    doc = json.loads(times_file.read_text())
    fsynced: list[int] = doc["fsynced"]
    deadline = time.monotonic() + GRACE_S + poll_interval_s
    while len(received) < len(fsynced) and (left := deadline - time.monotonic()) > 0:
        progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.wait(), left)
    follower.stop()
    await asyncio.wait_for(reader, timeout=10)
    latencies = [(received[i + 1] - t) / 1e6 for i, t in enumerate(fsynced) if i + 1 in received]
    return Result(
        mode=mode,
        written=len(fsynced),
        received=len(latencies),
        write_rate=summary["count"] / summary["seconds"],
        latencies_ms=latencies,
        fsync_ms=[n / 1e6 for n in doc["write_fsync_ns"]],
        batches=batches,
    )


def _ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def rows_for(results: list[Result], poll_interval_s: float, churn: bool = True) -> list[Row]:
    """Rows for one mode: percentiles over every entry of ``results`` (one per run)."""
    mode = results[0].mode
    label = f"follow {mode}"
    if mode == "polling":
        label += f" {poll_interval_s:g}s"
    runs = [r for r in results if r.latencies_ms]
    written = sum(r.written for r in results)
    received = sum(r.received for r in results)
    if not runs:
        return [Row(label, "latency", "n/a", f"nothing received of {written:,}")]
    pooled = [v for r in runs for v in r.latencies_ms]

    def each(fn: Callable[[list[float]], float]) -> str:
        return "runs: " + " / ".join(_ms(fn(r.latencies_ms)) for r in runs) if len(runs) > 1 else ""

    def pct(p: float) -> Callable[[list[float]], float]:
        return lambda values: percentile(values, p)

    missing = written - received
    early = sum(1 for v in pooled if v < 0)
    got = f"all of {len(runs)} runs; {received:,}/{written:,} entries"
    got += f" in {sum(r.batches for r in results):,} batches"
    got += "; Nexus's file churn" if churn else "; one segment, no other file"
    if missing:
        got += f" ({missing:,} MISSING)"
    fsync = [v for r in results for v in r.fsync_ms]
    return [
        Row(label, "latency p50", _ms(pct(50)(pooled)), f"{got}; {each(pct(50))}".rstrip("; ")),
        Row(label, "latency p90", _ms(pct(90)(pooled)), each(pct(90))),
        Row(label, "latency p99", _ms(pct(99)(pooled)), each(pct(99))),
        Row(
            label,
            "latency max",
            _ms(max(pooled)),
            f"{each(max)}; min {_ms(min(pooled))}; {early:,} yielded before the writer's "
            "fsync returned".lstrip("; "),
        ),
        Row(
            label,
            "writer appends/s",
            f"{median_of(runs, lambda r: r.write_rate):,.0f}",
            f"write+fsync p50 {_ms(percentile(fsync, 50))}, p99 {_ms(percentile(fsync, 99))}",
        ),
    ]


def run(
    rate: float = 1000.0,
    duration_s: float = 10.0,
    modes: tuple[str, ...] = ("watch", "polling"),
    *,
    runs: int = 3,
    poll_interval_s: float = 0.5,
    base_dir: Path | None = None,
    churn: bool = True,
) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="eventsinkd-bench-", dir=base_dir) as tmp:
        work_dir = Path(tmp)
        for mode in modes:
            results = []
            for i in range(runs):
                run_dir = work_dir / f"{mode}-{i}"
                run_dir.mkdir()
                results.append(
                    asyncio.run(measure(mode, rate, duration_s, run_dir, poll_interval_s, churn))
                )
            rows += rows_for(results, poll_interval_s, churn)
        fs = filesystem_of(work_dir)
    rows.append(
        Row(
            "follow",
            "temp WAL on",
            fs,
            f"{work_dir.parent}; {runs} x {duration_s:g} s per mode at {rate:,.0f} appends/s",
        )
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.follow_latency")
    ap.add_argument("--rate", type=float, default=1000.0, help="appends per second")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of appends per run")
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (pooled)")
    ap.add_argument("--mode", choices=["watch", "polling", "both"], default="both")
    ap.add_argument("--poll-interval", type=float, default=0.5)
    ap.add_argument("--dir", type=Path, help="where to create the temporary WAL")
    ap.add_argument(
        "--no-churn",
        action="store_true",
        help="one segment and no other file (not Nexus's group commit)",
    )
    ap.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--wal", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--times", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.writer:
        writer(args.wal, args.times, args.rate, args.duration, churn=not args.no_churn)
        return
    modes = ("watch", "polling") if args.mode == "both" else (args.mode,)
    started = time.monotonic()
    rows = run(
        args.rate,
        args.duration,
        modes,
        runs=args.runs,
        poll_interval_s=args.poll_interval,
        base_dir=args.dir,
        churn=not args.no_churn,
    )
    print_table(f"follow latency ({time.monotonic() - started:.0f} s)", rows)


if __name__ == "__main__":
    main()
