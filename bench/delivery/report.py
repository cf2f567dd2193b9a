"""What the delivery benchmark found, as its detailed report and as summary-table rows."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import NEXUS_EVENTS_PER_S, Row, machine_summary, nproc
from bench.common import Capacity
from bench.delivery.engine import BATCH_RECORDS, MAX_EVENTS, Cell


@dataclass(slots=True)
class Report:
    loop: str
    receiver: str
    connections: int
    runs: int
    quick: bool
    caps: list[Capacity] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    seconds: float = 0.0
    machine_note: str = ""


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], left: int = 1) -> str:
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        out = [
            f"{c:<{w}}" if i < left or i == len(cells) - 1 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def capacity_table(caps: list[Capacity], connections: int, client_loop: str) -> str:
    rows = [
        (
            f"{c.impl} ({c.loop})",
            f"{c.latency_ms} ms",
            f"{c.rate:,.0f}",
            f"{c.receiver_cpu_us:,.0f}",
            f"{1e6 / c.receiver_cpu_us:,.0f}" if c.receiver_cpu_us > 0 else "-",
            f"{c.loadgen_cpu_us:,.0f}",
            f"{c.errors}",
        )
        for c in caps
    ]
    headers = (
        "receiver",
        "latency",
        "req/s",
        "recv CPU us/req",
        "recv req/CPU-s",
        "loadgen CPU us/req",
        "errors",
    )
    title = (
        f"receiver alone: aiohttp load generator ({client_loop}), {connections} keep-alive "
        "connections, separate processes"
    )
    return f"{title}\n{_table(headers, rows, left=2)}"


def engine_table(cells: list[Cell], runs: int) -> str:
    rows = []
    for c in cells:
        nexus = NEXUS_EVENTS_PER_S[c.latency_ms]
        rates = " / ".join(f"{s.rate:,.0f}" for s in c.samples)
        rows.append(
            (
                f"{c.latency_ms} ms",
                f"{c.concurrency}",
                f"{c.events:,}",
                f"{c.rate:,.0f}",
                f"{c.cpu_ms_per_1000:,.0f}",
                f"{c.receiver_cpu_ms_per_1000:,.0f}",
                f"{c.wall_s:.2f}",
                f"{c.rate / nexus:.2f}x",
                f"{c.client.rate:,.0f}" if c.client else "-",
                f"{c.client.loadgen_cpu_us:,.0f}" if c.client else "-",
                rates,
            )
        )
    headers = (
        "receiver",
        "conc",
        "events N",
        "events/s",
        "CPU ms/1k ev",
        "recv CPU ms/1k",
        "wall s",
        "vs Nexus",
        "bare aiohttp req/s",
        "its CPU ms/1k",
        f"events/s of each run (median of {runs})",
    )
    return _table(headers, rows, left=1)


def nexus_lines() -> str:
    return (
        "Nexus v0.1.2 in-process notifier (Go), same machine type, one event at a time:\n"
        f"  ~{NEXUS_EVENTS_PER_S[0]:,.0f} events/s to a 0 ms receiver, "
        f"~{NEXUS_EVENTS_PER_S[10]:,.0f} events/s to a 10 ms receiver\n"
        "  ('vs Nexus' = engine events/s / the Nexus figure for the same receiver latency)\n"
        "'bare aiohttp': the load generator (aiohttp client, no engine) against the same\n"
        "  receiver with as many connections as the engine's concurrency: the client's ceiling"
    )


def print_report(rep: Report) -> None:
    quick = ", quick" if rep.quick else ""
    print(f"\n== delivery ({rep.seconds:.0f} s{quick}; engine on {rep.loop})")
    print(machine_summary())
    print(
        f"all on 127.0.0.1; receiver, load generator and engine are separate processes "
        f"sharing the same {nproc()} cores"
    )
    print(rep.machine_note)
    print()
    print(capacity_table(rep.caps, rep.connections, rep.loop))
    print()
    print(
        f"engine on {rep.loop} -> {rep.receiver} receiver: one sink, drop mode, "
        f"max_inflight {MAX_EVENTS:,}, batches of {BATCH_RECORDS}; "
        "CPU = time.process_time() of the engine's process"
    )
    print(engine_table(rep.cells, rep.runs))
    print()
    print(nexus_lines())
    sys.stdout.flush()


def summary_rows(rep: Report) -> list[Row]:
    """The figures ``python -m bench`` puts in its summary table."""
    label = f"delivery engine ({rep.loop})"
    rows = []
    for cap in rep.caps:
        if cap.impl != rep.receiver:
            continue
        per_cpu = f"{1e6 / cap.receiver_cpu_us:,.0f}" if cap.receiver_cpu_us > 0 else "-"
        rows.append(
            Row(
                "delivery receiver alone",
                f"{cap.latency_ms} ms receiver req/s",
                f"{cap.rate:,.0f}",
                f"{rep.connections} connections ({cap.loop}); {cap.receiver_cpu_us:,.0f} us "
                f"CPU/req = {per_cpu} req per receiver CPU-second",
            )
        )
    for c in rep.cells:
        nexus = NEXUS_EVENTS_PER_S[c.latency_ms]
        rates = " / ".join(f"{s.rate:,.0f}" for s in c.samples)
        client = f"; bare client {c.client.rate:,.0f} req/s" if c.client else ""
        rows.append(
            Row(
                label,
                f"{c.latency_ms} ms, conc {c.concurrency} events/s",
                f"{c.rate:,.0f}",
                f"{c.rate / nexus:.2f}x Nexus; {c.cpu_ms_per_1000:,.0f} CPU-ms/1k ev; "
                f"median of {len(c.samples)} ({rates}){client}",
            )
        )
    return rows
