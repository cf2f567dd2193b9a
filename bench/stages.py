"""``python -m bench.stages``: what each step of one event's way costs, in this process.

The per-event path of a webhook sink, taken apart and timed alone over the lines of a
WAL written by the Nexus-like writer (``bench.e2e.common.write_fast``, ~1.6 KB lines with
a full memory payload): the read (the segment's bytes cut into lines), the line's framing
and CRC check, its JSON decoded into the entry (the payload skipped), the event (its body
rendered), the Standard Webhooks signature, the Prometheus updates a delivered event makes (its WAL
time parsed for the latency histogram), the sink's queue, and the block-mode position
(a ticket tracked and finished). Each figure is the best of ``--runs`` passes over the
lines, in µs per event. The HTTP request itself is ``bench.webhook_client``'s figure; the
asyncio scheduling around all of it is what the end-to-end figures add.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import Row, print_table
from bench.e2e.common import write_fast
from eventsinkd.delivery.acks import AckTracker
from eventsinkd.events import MEMORY_WRITTEN, Event
from eventsinkd.metrics import Metrics, SinkMetrics
from eventsinkd.transports.contract import Outcome
from eventsinkd.transports.signing import sign
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, entry_from_json_bytes
from eventsinkd.wal.position import Position

KEYS = [b"0123456789abcdef0123456789abcdef"]  # one signing key, as a sink with a secret has


def _best(fn: Callable[[], object], runs: int, n: int) -> float:
    """µs per item of the fastest of ``runs`` calls of ``fn`` (over ``n`` items)."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def measure(entries: int, runs: int) -> list[tuple[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="eventsinkd-stages-"))
    try:
        write_fast(tmp, entries)
        blobs = [p.read_bytes() for p in sorted(tmp.iterdir()) if p.stat().st_size]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [line for blob in blobs for line in blob.split(b"\n") if line]
    n = len(lines)
    parser = LineParser()
    bodies = [parser.check(line) for line in lines]
    assert all(isinstance(b, bytes) for b in bodies)
    built = [entry_from_json_bytes(b) for b in bodies]
    ents: list[Entry] = [e for e in built if e is not None]
    events = [Event(MEMORY_WRITTEN, e, ("summary",)) for e in ents]
    m = SinkMetrics(Metrics(), "bench")

    def read() -> None:
        for blob in blobs:
            blob.split(b"\n")

    def metrics() -> None:
        for ev in events:
            m.offered.inc()
            m.duration.observe(0.001)
            m.attempts[Outcome.DELIVERED].inc(1)
            m.delivered.inc()
            wal_time = ev.wal_time
            if wal_time is not None:
                m.latency.observe(max(0.0, time.time() - wal_time))

    def queue() -> None:
        q: asyncio.Queue[Any] = asyncio.Queue()
        for ev in events:
            q.put_nowait(ev)
        while not q.empty():
            q.get_nowait()

    def position() -> None:
        tracker = AckTracker(lambda _pos: None)
        pos = Position("wal-1.jsonl", 1)
        for tk in [tracker.track(pos, e.timestamp) for e in ents]:
            tracker.done(tk)

    stages: list[tuple[str, Callable[[], object]]] = [
        ("read: segment bytes cut into lines", read),
        ("line: framing and CRC check", lambda: [parser.check(x) for x in lines]),
        ("line: JSON decoded into the entry", lambda: [entry_from_json_bytes(b) for b in bodies]),
        (
            "event: id, body rendered",
            lambda: [Event(MEMORY_WRITTEN, e, ("summary",)) for e in ents],
        ),
        (
            "signature (one key)",
            lambda: [sign(KEYS, e.id, 1_800_000_000, e.body("summary")) for e in events],
        ),
        ("metrics of a delivered event", metrics),
        ("sink queue: put and get", queue),
        ("position: ticket tracked, finished", position),
    ]
    return [(name, _best(fn, runs, n)) for name, fn in stages]


def rows(results: list[tuple[str, float]]) -> list[Row]:
    total = sum(us for _, us in results)
    out = [Row("per-event stages", name, f"{us:.2f} µs") for name, us in results]
    out.append(
        Row(
            "per-event stages",
            "sum of the above",
            f"{total:.1f} µs",
            "in-process, best of the runs; the HTTP request is the webhook client's figure",
        )
    )
    return out


def run(quick: bool = False) -> list[Row]:
    return rows(measure(5_000 if quick else 20_000, 3 if quick else 7))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print_table("per-event stages", run(args.quick))


if __name__ == "__main__":
    main()
