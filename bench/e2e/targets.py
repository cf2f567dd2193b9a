"""i. Issue 11's targets, in one run: the bare aiohttp client, then the daemon with defaults.

1. The bare client: the load generator (``bench/receiver.py --load``: aiohttp on uvloop,
   16 connections, a fixed body, nothing else) against the 0 ms receiver: its events/s and
   its CPU per request. That is the floor an HTTP client in Python costs.
2. The daemon with a default sink (no ``concurrency``, no tuning): a pre-written WAL handed
   over at once (as ``throughput`` does) to the same 0 ms receiver, then to a 10 ms one.

Targets (issue 11): the daemon's rate >= 87 % of the bare client's, its CPU per delivered
event <= 1.2x the bare client's per request, and >= 50x Nexus's 95 events/s against 10 ms.
"""

from __future__ import annotations

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
    bare: list[Capacity] = field(default_factory=list)  # before and after the daemon's runs
    zero: TpCell | None = None
    ten: TpCell | None = None


def measure(res: Results, work: Path) -> None:
    s = res.settings
    out = res.targets = TargetResult()
    with Receiver(0) as rcv:
        with stage("targets: bare aiohttp client, 0 ms"):
            out.bare.append(load_receiver(rcv, BARE_CONNECTIONS, s.load_s, uvloop=True))
        with stage("targets: daemon defaults, 0 ms"):
            out.zero = throughput_cell(rcv, None, s.runs, s.target_s, work)
        with stage("targets: bare aiohttp client again"):
            out.bare.append(load_receiver(rcv, BARE_CONNECTIONS, s.load_s, uvloop=True))
    with Receiver(10) as rcv, stage("targets: daemon defaults, 10 ms"):
        out.ten = throughput_cell(rcv, None, s.runs, s.target_s, work)


def target_rows(res: Results) -> list[Row]:
    t = res.targets
    if t is None or not t.bare or t.zero is None:
        return []
    bare_rate = sum(c.rate for c in t.bare) / len(t.bare)
    bare_us = sum(c.loadgen_cpu_us for c in t.bare) / len(t.bare)
    zero, ten = t.zero, t.ten
    daemon_us = zero.cpu_per_1k * 1000  # CPU-seconds per 1,000 events -> µs per event
    rows = [
        Row(
            "issue 11 targets",
            f"bare aiohttp client, {BARE_CONNECTIONS} conns, 0 ms",
            f"{bare_rate:,.0f}/s",
            f"{bare_us:.1f} µs CPU per request; runs "
            + " / ".join(f"{c.rate:,.0f}/s at {c.loadgen_cpu_us:.1f} µs" for c in t.bare)
            + " (before and after the daemon's)",
        ),
        Row(
            "issue 11 targets",
            "daemon defaults, 0 ms: rate vs bare",
            f"{zero.rate / bare_rate:.0%}",
            f"{zero.rate:,.0f}/s (target >= {RATE_SHARE:.0%}: "
            f"{'met' if zero.rate >= RATE_SHARE * bare_rate else 'missed'})",
        ),
        Row(
            "issue 11 targets",
            "daemon defaults, 0 ms: CPU vs bare",
            f"{daemon_us / bare_us:.2f}x",
            f"{daemon_us:.1f} µs per delivered event (target <= {CPU_RATIO}x: "
            f"{'met' if daemon_us <= CPU_RATIO * bare_us else 'missed'})",
        ),
    ]
    if ten is not None:
        met = "met" if ten.rate >= TEN_MS_FACTOR * NEXUS_10MS else "missed"
        rows.append(
            Row(
                "issue 11 targets",
                "daemon defaults, 10 ms receiver",
                f"{ten.rate:,.0f}/s",
                f"{ten.rate / NEXUS_10MS:.0f}x Nexus's {NEXUS_10MS:.0f}/s (target >= "
                f"{TEN_MS_FACTOR}x: {met})",
            )
        )
    return rows
