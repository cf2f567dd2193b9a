"""Run every benchmark and print one summary table: ``python -m bench [--quick]``."""

from __future__ import annotations

import argparse
import time

from bench import Row, catchup, follow_latency, machine_summary, print_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller WALs and shorter runs")
    ap.add_argument("--skip-catchup", action="store_true")
    ap.add_argument("--skip-follow", action="store_true")
    args = ap.parse_args(argv)
    started = time.monotonic()
    print(machine_summary(), flush=True)
    rows: list[Row] = []
    if not args.skip_catchup:
        if args.quick:
            rows += catchup.run(100_000, 20_000, runs=3, budget_s=60.0)
        else:
            rows += catchup.run(1_000_000, 100_000, runs=3, budget_s=160.0)
    if not args.skip_follow:
        rows += follow_latency.run(1000.0, 3.0 if args.quick else 10.0)
    elapsed = time.monotonic() - started
    mode = "quick" if args.quick else "full"
    print_table(f"eventsinkd benchmarks ({mode}, {elapsed:.0f} s)", rows)


if __name__ == "__main__":
    main()
