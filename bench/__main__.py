"""Run every benchmark and print one summary table: ``python -m bench [--quick]``.

catch-up (bench.catchup), follow latency (bench.follow_latency), the sidecar's cost at
Nexus's rates (bench.cost: CPU idle and at 100 / 500 / 1,000 appends/s, latency, the
first entry of a new WAL directory), delivery engine
(bench.delivery), one webhook POST (bench.webhook_client), the per-event stages
(bench.stages) and end to end through the real daemon (bench.e2e); not the soak test
(``make soak``). Each figure is the median of several runs (3; 1 with ``--quick``; the
stages take the best of theirs). The summary ends with the comparison with Nexus's own
in-process notifier.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from bench import (
    NEXUS_EVENTS_PER_S,
    Row,
    catchup,
    cost,
    delivery,
    e2e,
    follow_latency,
    machine_summary,
    print_table,
    stages,
    webhook_client,
)
from bench.e2e.burst import median_dropped

# Nexus v0.1.2's notifier (internal/eventsink), measured on this machine type.
NEXUS_0MS = NEXUS_EVENTS_PER_S[0]
NEXUS_10MS = NEXUS_EVENTS_PER_S[10]
NEXUS_BURST_DROPPED = 1_000  # of a 2,000-event burst, with its default queue of 1,000


def _guarded(name: str, fn: Callable[[], list[Row]], errors: list[str]) -> list[Row]:
    """One benchmark; if it fails, the others still run and the table says so."""
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        errors.append(f"{name}: {exc}")
        return [Row(f"{name} ERROR", type(exc).__name__, "failed", str(exc)[:300])]


def nexus_rows(rep: delivery.Report | None, res: e2e.Results | None) -> list[Row]:
    """eventsinkd against Nexus's own notifier, from the figures measured above."""
    rows: list[Row] = []
    for latency, nexus in ((0, NEXUS_0MS), (10, NEXUS_10MS)):
        cells = [c for c in (res.cells if res else []) if c.latency_ms == latency]
        engine = [c for c in (rep.cells if rep else []) if c.latency_ms == latency]
        if not cells and not engine:
            continue
        detail = []
        if cells:
            detail.append(
                "real daemon WAL->receiver, conc "
                + "/".join(str(c.concurrency) for c in cells)
                + ": "
                + " / ".join(f"{c.rate:,.0f} ({c.rate / nexus:.2f}x)" for c in cells)
            )
        if engine:
            detail.append(
                f"engine alone ({rep.loop if rep else '?'}): "
                + " / ".join(f"{c.rate:,.0f}" for c in engine)
            )
        best = max(c.rate for c in cells) if cells else max(c.rate for c in engine)
        rows.append(
            Row(
                "vs Nexus notifier",
                f"{latency} ms receiver: Nexus ~{nexus:,.0f} ev/s",
                f"{best:,.0f}",
                "eventsinkd's best; " + "; ".join(detail),
            )
        )
    if res is not None and res.bursts:
        got = {mode: median_dropped(results) for mode, results in res.bursts.items()}
        value = " / ".join(f"{mode} {n:,.0f}" for mode, n in got.items())
        rows.append(
            Row(
                "vs Nexus notifier",
                f"2,000 burst, blocked rcv: Nexus drops ~{NEXUS_BURST_DROPPED:,}",
                value,
                "eventsinkd dropped, default max_inflight 1,000: drop mode keeps Nexus's "
                "behaviour (queue 1,000, the rest dropped); block mode pauses reading instead",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller WALs, shorter runs, 1 run each")
    ap.add_argument("--skip-catchup", action="store_true")
    ap.add_argument("--skip-follow", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-delivery", action="store_true")
    ap.add_argument("--skip-client", action="store_true")
    ap.add_argument("--skip-stages", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument(
        "--asyncio", action="store_true", help="delivery: the engine on asyncio's loop, not uvloop"
    )
    args = ap.parse_args(argv)
    started = time.monotonic()
    quick = args.quick
    print(machine_summary(), flush=True)
    rows: list[Row] = []
    errors: list[str] = []
    if not args.skip_catchup:
        if quick:
            rows += _guarded(
                "catchup", lambda: catchup.run(100_000, 20_000, runs=1, budget_s=30.0), errors
            )
        else:
            rows += _guarded(
                "catchup", lambda: catchup.run(1_000_000, 100_000, runs=3, budget_s=160.0), errors
            )
    if not args.skip_follow:
        rows += _guarded(
            "follow",
            lambda: follow_latency.run(1000.0, 2.0 if quick else 5.0, runs=1 if quick else 3),
            errors,
        )
    if not args.skip_cost:
        rows += _guarded("cost", lambda: cost.run(quick), errors)
    rep: delivery.Report | None = None
    if not args.skip_delivery:

        def run_delivery() -> list[Row]:
            nonlocal rep
            out, rep = delivery.run(quick=quick, use_asyncio=args.asyncio)
            return out

        rows += _guarded("delivery", run_delivery, errors)
    if not args.skip_client:
        rows += _guarded("webhook client", lambda: webhook_client.run(quick), errors)
    if not args.skip_stages:
        rows += _guarded("stages", lambda: stages.run(quick), errors)
    res: e2e.Results | None = None
    if not args.skip_e2e:

        def run_e2e() -> list[Row]:
            nonlocal res
            out, res = e2e.run(quick=quick)
            return out

        rows += _guarded("e2e", run_e2e, errors)
        if res is not None:
            errors += res.errors
    rows += nexus_rows(rep, res)
    elapsed = time.monotonic() - started
    mode = "quick" if quick else "full"
    print_table(f"eventsinkd benchmarks ({mode}, {elapsed:.0f} s)", rows)
    if rep is not None:
        print(f"delivery: {rep.machine_note}")
    if res is not None and res.machine_note:
        print(res.machine_note)
    print(
        "Nexus v0.1.2 notifier (Go, in-process, one event at a time), same machine type: "
        f"~{NEXUS_0MS:,.0f} events/s to a 0 ms receiver, ~{NEXUS_10MS:,.0f} to a 10 ms one, "
        f"~{NEXUS_BURST_DROPPED:,} of a 2,000-event burst dropped (default queue 1,000)"
    )
    sys.stdout.flush()
    if errors:
        print("\nFAILED: " + "; ".join(errors), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
