"""i. Issue 11's targets, in one run: the bare aiohttp client, then the daemon with defaults.

1. The bare client: the load generator (``bench/receiver.py --load``: aiohttp on uvloop,
   16 connections, a fixed body, nothing else) against the 0 ms receiver: its events/s and
   its CPU per request. That is the floor an HTTP client in Python costs.
2. The daemon with a default sink (no ``concurrency``, no tuning): a pre-written WAL handed
   over at once (as ``throughput`` does) to the same 0 ms receiver, then to a 10 ms one.

The bare client runs before each of the daemon's 0 ms runs and after the last, and each
run is compared with the two bare runs around it: this machine's speed drifts by tens of
per cent within a minute (the bare client alone gave 62 to 110 µs per request in one
session), so a comparison with runs a minute away says more about the drift than about
the daemon. The figures are the medians of those per-run comparisons.

Targets (issue 11): the daemon's rate >= 87 % of the bare client's, its CPU per delivered
event <= 1.2x the bare client's per request, and >= 50x Nexus's 95 events/s against 10 ms.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench import Row
from bench.common import Capacity, Receiver, load_receiver
from bench.e2e.common import stage
from bench.e2e.throughput import TpCell, throughput_cell

if TYPE_CHECKING:
    from bench.e2e import Results

BARE_CONNECTIONS = 16
NEXUS_10MS = 95.0
RATE_SHARE, CPU_RATIO, TEN_MS_FACTOR = 0.87, 1.2, 50


@dataclass(slots=True)
class TargetResult:
    bare: list[Capacity] = field(default_factory=list)  # around each daemon run at 0 ms
    zero: TpCell | None = None
    ten: TpCell | None = None


def measure(res: Results, work: Path) -> None:
    s = res.settings
    out = res.targets = TargetResult()

    def bare() -> None:
        out.bare.append(load_receiver(rcv, BARE_CONNECTIONS, s.load_s, uvloop=True))

    with Receiver(0) as rcv, stage("targets: daemon defaults and the bare client in turn, 0 ms"):
        out.zero = throughput_cell(rcv, None, s.runs, s.target_s, work, around=bare)
    with Receiver(10) as rcv, stage("targets: daemon defaults, 10 ms"):
        out.ten = throughput_cell(rcv, None, s.runs, s.target_s, work)


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def target_rows(res: Results) -> list[Row]:
    t = res.targets
    if t is None or t.zero is None or len(t.bare) != len(t.zero.runs) + 1:
        return []
    zero, ten = t.zero, t.ten
    # Each daemon run against the mean of the bare runs just before and just after it.
    around = list(itertools.pairwise(t.bare))
    rates = [r.rate / ((a.rate + b.rate) / 2) for r, (a, b) in zip(zero.runs, around, strict=True)]
    cpus = [
        r.cpu_per_1k * 1000 / ((a.loadgen_cpu_us + b.loadgen_cpu_us) / 2)
        for r, (a, b) in zip(zero.runs, around, strict=True)
    ]
    rate, cpu = statistics.median(rates), statistics.median(cpus)
    rows = [
        Row(
            "issue 11 targets",
            f"bare aiohttp client, {BARE_CONNECTIONS} conns, 0 ms",
            f"{statistics.median(c.rate for c in t.bare):,.0f}/s",
            "median; runs "
            + " / ".join(f"{c.rate:,.0f}/s at {c.loadgen_cpu_us:.1f} µs" for c in t.bare)
            + " (CPU per request), one before each daemon run and one after the last",
        ),
        Row(
            "issue 11 targets",
            "daemon defaults, 0 ms: rate vs bare",
            f"{rate:.0%}",
            f"median of {len(rates)} runs, each against the bare runs around it: "
            + " / ".join(f"{x:.0%}" for x in rates)
            + f"; {zero.rate:,.0f}/s (target >= {RATE_SHARE:.0%}: "
            f"{_verdict(rate >= RATE_SHARE)}, in {sum(x >= RATE_SHARE for x in rates)} of "
            f"{len(rates)} runs)",
        ),
        Row(
            "issue 11 targets",
            "daemon defaults, 0 ms: CPU vs bare",
            f"{cpu:.2f}x",
            "median, as above: "
            + " / ".join(f"{x:.2f}x" for x in cpus)
            + f"; {zero.cpu_per_1k * 1000:.1f} µs per delivered event (target <= "
            f"{CPU_RATIO}x: {_verdict(cpu <= CPU_RATIO)}, in "
            f"{sum(x <= CPU_RATIO for x in cpus)} of {len(cpus)} runs)",
        ),
    ]
    if ten is not None:
        rows.append(
            Row(
                "issue 11 targets",
                "daemon defaults, 10 ms receiver",
                f"{ten.rate:,.0f}/s",
                f"{ten.rate / NEXUS_10MS:.0f}x Nexus's {NEXUS_10MS:.0f}/s (target >= "
                f"{TEN_MS_FACTOR}x: {_verdict(ten.rate >= TEN_MS_FACTOR * NEXUS_10MS)}); runs "
                + " / ".join(f"{r.rate:,.0f}/s" for r in ten.runs),
            )
        )
    return rows
