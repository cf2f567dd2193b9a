"""Delivery throughput: events per second from the engine to a local HTTP receiver.

    python -m bench.delivery            # full run, about 2 minutes
    python -m bench.delivery --quick    # about half a minute
    python -m bench.delivery --profile  # cProfile of the engine, 0 ms receiver, concurrency 64
    python -m bench.delivery --asyncio  # the engine on asyncio's own loop instead of uvloop

Everything stays on 127.0.0.1. The receiver (``bench/receiver.py``) is a separate process
answering ``204`` after 0 ms or 10 ms; the receiver, the load generator and the engine
(this process) share the machine's cores.

1. The receiver alone: a load generator in another process (aiohttp client, 64 keep-alive
   connections) hammers it for a few seconds. Its rate and the receiver's CPU time per
   request show how far the receiver is from being the bottleneck (``bench.common``).
2. The engine: one sink pointing at the receiver, ``concurrency`` 1, 8 and 64, drop mode
   with ``max_inflight`` above N so nothing is dropped. Each run builds a fresh Engine,
   hands it N events in batches of 500 (synthetic entries, as in tests/delivery/test_delivery.py,
   built before the clock starts), waits for wait_idle(), and takes wall time and this
   process's CPU time (time.process_time()); delivered must equal N, at the engine and at
   the receiver. N is calibrated per cell by a warm-up so a run takes about ``--seconds``.
   The median of ``--runs`` runs is reported. Beside each cell, the bare aiohttp client
   (the load generator, no engine) with as many connections as the engine's concurrency:
   the ceiling of the HTTP client the engine uses (``engine``).

Nexus's own in-process notifier (Go, v0.1.2), measured on this machine type, is printed
for comparison (``report``). The engine runs on uvloop, as ``eventsinkd run`` does when uvloop
is installed (it falls back to asyncio's loop otherwise, and says so); ``--asyncio`` runs it
on asyncio's own loop for comparison. The bare client runs on the same loop as the engine.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench import CONCURRENCIES, LATENCIES_MS, NEXUS_EVENTS_PER_S, CpuMeter, Row, stage
from bench.common import Receiver, load_receiver, receiver_alone
from bench.delivery.engine import MAX_EVENTS, MIN_EVENTS, measure_cell, resolve_loop, run_on
from bench.delivery.profiling import profile
from bench.delivery.report import Report, print_report, summary_rows

__all__ = ["NEXUS_EVENTS_PER_S", "Report", "main", "measure_all", "print_report", "run"]


def measure_all(
    *,
    quick: bool = False,
    runs: int | None = None,
    seconds: float | None = None,
    events: int | None = None,
    connections: int = 64,
    receiver: str = "raw",
    loop: str = "uvloop",
) -> Report:
    """The receiver alone, then the engine in every cell (progress on stderr)."""
    rep = Report(loop, receiver, connections, runs or (1 if quick else 3), quick)
    target_s = seconds or (1.0 if quick else 4.0)
    load_s = 1.5 if quick else 3.0
    on_uvloop = loop == "uvloop"
    meter = CpuMeter()
    load_before = os.getloadavg()[0]

    impls = ("raw",) if quick else ("raw", "aiohttp")
    for impl in impls:
        for latency in LATENCIES_MS:
            with stage(f"receiver alone: {impl}, {latency} ms"):
                rep.caps.append(
                    receiver_alone(impl, latency, load_s, connections, uvloop=on_uvloop)
                )

    for latency in LATENCIES_MS:
        with Receiver(latency, receiver) as rcv:
            for conc in CONCURRENCIES:
                with stage(f"engine ({loop}): {latency} ms receiver, concurrency {conc}"):
                    cell = run_on(loop, measure_cell(rcv, conc, rep.runs, target_s, events))
                with stage(f"bare aiohttp client: {latency} ms receiver, {conc} connections"):
                    cell.client = load_receiver(rcv, conc, load_s, uvloop=on_uvloop)
                rep.cells.append(cell)

    use = meter.read()
    rep.seconds = use.seconds
    others = ""
    if use.other_s is not None:
        others = (
            f"; other processes used {use.other_s:.0f} CPU-s of the {use.available_s:.0f} "
            f"available ({use.other_s / use.available_s:.0%})"
        )
    rep.machine_note = (
        f"this benchmark used {use.own_s:.0f} CPU-s{others}; 1-min load average "
        f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (other work on "
        "the machine skews events/s more than CPU per event)"
    )
    return rep


def run(
    *,
    quick: bool = False,
    runs: int | None = None,
    use_asyncio: bool = False,
) -> tuple[list[Row], Report]:
    """Measure and print the detailed report; the summary rows and the report (for
    ``python -m bench``)."""
    rep = measure_all(quick=quick, runs=runs, loop=resolve_loop(use_asyncio))
    print_report(rep)
    return summary_rows(rep), rep


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.delivery")
    ap.add_argument("--quick", action="store_true", help="short runs, 1 run per cell")
    ap.add_argument("--runs", type=int, help="runs per cell (default 3; 1 with --quick)")
    ap.add_argument("--seconds", type=float, help="target seconds per run (default 4; 1 quick)")
    ap.add_argument("--events", type=int, help="fixed N per run instead of calibrating")
    ap.add_argument("--connections", type=int, default=64, help="load generator connections")
    ap.add_argument("--receiver", choices=("raw", "aiohttp"), default="raw")
    ap.add_argument("--profile", action="store_true", help="cProfile 0 ms / concurrency 64")
    ap.add_argument(
        "--asyncio",
        action="store_true",
        help="engine and bare client on asyncio's own loop (default: uvloop, as the daemon)",
    )
    args = ap.parse_args(argv)
    loop = resolve_loop(args.asyncio)
    if not args.asyncio and loop != "uvloop":
        print("uvloop is not installed: the engine runs on asyncio's loop", file=sys.stderr)
    if args.profile:
        print(profile(args.events or 20_000, loop=loop))
        return
    if args.events is not None and not MIN_EVENTS <= args.events <= MAX_EVENTS:
        ap.error(f"--events must be within {MIN_EVENTS}..{MAX_EVENTS}")
    rep = measure_all(
        quick=args.quick,
        runs=args.runs,
        seconds=args.seconds,
        events=args.events,
        connections=args.connections,
        receiver=args.receiver,
        loop=loop,
    )
    print_report(rep)
