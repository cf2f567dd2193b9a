"""End to end: the Nexus-like writer -> WAL -> the real ``eventsinkd run`` -> a receiver.

    python -m bench.e2e                       # about 11 minutes
    python -m bench.e2e --quick               # about 2 minutes
    python -m bench.e2e --quick --only burst  # one figure (or several, comma-separated)

Three kinds of process, all on 127.0.0.1: this one (the Nexus-like writer,
``eventsinkd.devtools.sim.nexus_writer.NexusWriter``: every ``append`` is one fsynced group
commit), the daemon (``python -m eventsinkd run -c <tmp config>``, on uvloop when it
is installed, as in production) and ``bench/receiver.py`` (a raw asyncio HTTP receiver,
204 after a configurable latency, that reports what arrived on ``GET /__stats``).
The daemon's CPU time is utime+stime from ``/proc/<pid>/stat``, its memory VmRSS and
VmHWM from ``/proc/<pid>/status``. What the figures share is in ``bench.e2e.common``;
each figure has its module, which says how it is measured:

a. ``throughput``: a pre-written WAL handed to the daemon at once, events/s to the receiver
   and the daemon's CPU per 1,000 events, by receiver latency and sink concurrency.
b. ``latency``: from a line's fsync to its arrival at the receiver, at fixed write rates.
c. ``memory``: peak RSS with a 1,000,000-entry backlog behind a dead sink.
d. ``idle``: the daemon's CPU% with nothing written, and with 1,000 events/s.
e. ``burst``: a 2,000-event burst against a receiver that never answers, default
   ``max_inflight`` 1,000: how many events are dropped in drop and block mode.
f. ``cursors``: what one sink's cursor costs the others: a healthy sink's events/s beside
   a dead one, an added sink catching up on a backlog while two others tail (its rate, their
   latency), RSS with 8 sinks (2 dead) over 1,000,000 entries, reading CPU with 1 and 4 sinks.
g. ``transports``: every sink type (webhook, nats, syslog TCP and UDP, otlp JSON and
   protobuf, fluentd) to a local server (``bench.peers``): events/s and the daemon's CPU per
   event, as ``throughput`` measures them (about 2.5 minutes; 30 s with ``--quick``).
h. ``statuses``: CPU of the reader (``tail``) and of the daemon with and without status
   events, at 1,000 appends/s with Nexus-like marking.
i. ``adaptive``: events/s and the concurrency ``concurrency: auto`` chooses against a 0, 10,
   50 and 200 ms receiver, and the 10 ms one with ``order: subject`` over 100 subjects.
j. ``dirsize``: the daemon's CPU at 500 appends/s with Nexus's file churn, started on an empty
   WAL directory and on one with 200,000 leftover empty segments; and how long it takes to be
   ready with 1,000,000 files in the directory (about 3 minutes; 1.5 with ``--quick``).
k. ``targets``: issue 11's targets in one run: the daemon with a default sink against a 0 ms
   receiver, with the bare aiohttp client (the load generator) before each run and after
   the last, each run compared with the bare runs around it; then a 10 ms receiver.

``bench.e2e.rows`` turns the results into the rows of the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import CpuMeter, Row, print_table
from bench.common import Capacity
from bench.e2e import (
    adaptive,
    burst,
    cursors,
    dirsize,
    idle,
    latency,
    memory,
    statuses,
    targets,
    throughput,
    transports,
)
from bench.e2e.adaptive import AdCell
from bench.e2e.burst import BurstResult
from bench.e2e.common import Settings
from bench.e2e.cursors import CursorResults
from bench.e2e.dirsize import DirSizeResult
from bench.e2e.idle import IdleResult
from bench.e2e.latency import LatResult
from bench.e2e.memory import MemResult
from bench.e2e.rows import rows_for
from bench.e2e.statuses import StatusCost
from bench.e2e.targets import TargetResult
from bench.e2e.throughput import TpCell
from bench.e2e.transports import TrCell

__all__ = ["FIGURES", "Results", "Settings", "main", "measure", "rows_for", "run"]

# In the order they run: the name --only takes, the one a failure is reported under, the part.
_PARTS: tuple[tuple[str, str, Callable[[Results, Path], None]], ...] = (
    ("throughput", "throughput", throughput.measure),
    ("latency", "latency", latency.measure),
    ("idle", "idle cost", idle.measure),
    ("memory", "memory", memory.measure),
    ("burst", "burst", burst.measure),
    ("cursors", "cursors beside a dead sink", cursors.measure_beside),
    ("cursors", "cursors catch-up", cursors.measure_catch_up),
    ("cursors", "cursors memory", cursors.measure_memory),
    ("cursors", "cursors reading CPU", cursors.measure_cpu),
    ("transports", "transports", transports.measure),
    ("statuses", "status events", statuses.measure),
    ("adaptive", "adaptive concurrency", adaptive.measure),
    ("dirsize", "directory size", dirsize.measure),
    ("targets", "issue 11 targets", targets.measure),
)
FIGURES = (
    "throughput",
    "latency",
    "memory",
    "idle",
    "burst",
    "cursors",
    "transports",
    "statuses",
    "adaptive",
    "dirsize",
    "targets",
)


@dataclass(slots=True)
class Results:
    settings: Settings
    loop: str = "?"
    capacities: dict[int, Capacity] = field(default_factory=dict)
    cells: list[TpCell] = field(default_factory=list)
    latencies: list[LatResult] = field(default_factory=list)
    memory: list[MemResult] = field(default_factory=list)
    mem_wal: str = ""
    idle: IdleResult | None = None
    bursts: dict[str, list[BurstResult]] = field(default_factory=dict)
    cursors: CursorResults = field(default_factory=CursorResults)
    transports: list[TrCell] = field(default_factory=list)
    statuses: StatusCost | None = None
    adaptive: list[AdCell] = field(default_factory=list)
    dirsize: DirSizeResult | None = None
    targets: TargetResult | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    machine_note: str = ""


def _guard(res: Results, what: str, part: Callable[[Results, Path], None], work: Path) -> None:
    """Run one part; a failure is recorded (and shown in the table), the others still run."""
    try:
        part(res, work)
    except Exception as exc:
        res.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        print(f"\n!! e2e {what} failed: {exc}", file=sys.stderr, flush=True)


def measure(
    settings: Settings, base_dir: Path | None = None, only: tuple[str, ...] = FIGURES
) -> Results:
    """The figures named in ``only`` (all by default), in their usual order."""
    res = Results(settings)
    meter = CpuMeter()
    with tempfile.TemporaryDirectory(prefix="eventsinkd-e2e-", dir=base_dir) as tmp:
        work = Path(tmp)
        for name, what, part in _PARTS:
            if name in only:
                _guard(res, what, part, work)
    use = meter.read()
    res.seconds = use.seconds
    if use.other_s is not None:
        avail = use.available_s
        res.machine_note = (
            f"e2e used {use.own_s:.0f} CPU-s; other processes on the machine used "
            f"{use.other_s:.0f} of the {avail:.0f} CPU-s available ({use.other_s / avail:.0%})"
        )
    return res


def run(
    *, quick: bool = False, runs: int | None = None, only: tuple[str, ...] = FIGURES
) -> tuple[list[Row], Results]:
    """Measure (every figure by default); the rows and the raw results (``python -m bench``)."""
    res = measure(Settings.make(quick, runs), only=only)
    return rows_for(res), res


def _figures(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FIGURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: choose from {','.join(FIGURES)}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e")
    ap.add_argument("--quick", action="store_true", help="1 run per figure, shorter runs")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3; 1 with --quick)")
    ap.add_argument(
        "--only",
        type=_figures,
        default=FIGURES,
        metavar="FIGURES",
        help=f"comma-separated, of {','.join(FIGURES)} (default: all of them)",
    )
    args = ap.parse_args(argv)
    rows, res = run(quick=args.quick, runs=args.runs, only=args.only)
    mode = "quick" if args.quick else "full"
    if set(args.only) != set(FIGURES):
        mode += ", only " + ",".join(n for n in FIGURES if n in args.only)
    print_table(f"e2e ({mode}, {res.seconds:.0f} s)", rows)
    print(res.machine_note)
    if res.errors:
        raise SystemExit(1)
