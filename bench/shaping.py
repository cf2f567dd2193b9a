"""``python -m bench.shaping``: what shaping an event costs per event, in this process.

Over the events of a WAL written by the Nexus-like writer (as ``bench.stages``), each
figure the best of ``--runs`` passes, in µs per event: the default body (for reference:
what every event costs already), the CloudEvents structured body (attributes from the
body's fields, ``data`` the body) and binary mode's ce- headers, a templated URL path and
query, and a small transform (a jq program mapping 3 fields, the target: ≤ 20 µs).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench import Row, print_table
from bench.e2e.common import write_fast
from bench.stages import _best
from eventsinkd.config.cloudevents import CloudEventsConfig
from eventsinkd.events import MEMORY_WRITTEN, Event, event_body
from eventsinkd.events.templates import Template, path_segment, query_value
from eventsinkd.events.transform import Transform
from eventsinkd.transports.cloudevents import CloudEvents
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, entry_from_json_bytes

THREE_FIELDS = "{memory: .payload_id, user: .subject, at: .timestamp}"


def measure(entries: int, runs: int) -> list[tuple[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="eventsinkd-shaping-"))
    try:
        write_fast(tmp, entries)
        blobs = [p.read_bytes() for p in sorted(tmp.iterdir()) if p.stat().st_size]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    parser = LineParser()
    lines = [line for blob in blobs for line in blob.split(b"\n") if line]
    bodies = [parser.check(line) for line in lines]
    built = [entry_from_json_bytes(b) for b in bodies if isinstance(b, bytes)]
    ents: list[Entry] = [e for e in built if e is not None]
    events = [Event(MEMORY_WRITTEN, e, ("summary",)) for e in ents]
    n = len(events)
    structured = CloudEvents(CloudEventsConfig())
    transform = Transform(THREE_FIELDS, "bench")
    path = Template("/users/{subject}/memories", path_segment)
    query = Template("from={source}", query_value)

    def shape() -> None:
        for e in events:
            transform.apply(e.original_body("summary"), e.id, e.type, e.wal_time)

    stages = [
        ("default body (reference)", lambda: [event_body(e, "summary") for e in ents]),
        (
            "cloudevents structured body",
            lambda: [structured.structured(e, "summary") for e in events],
        ),
        ("cloudevents binary: ce- headers", lambda: [structured.headers(e) for e in events]),
        (
            "templated URL: path and query",
            lambda: [path.render(e) + "?" + query.render(e) for e in events],
        ),
        ("transform: 3-field jq mapping", shape),
    ]
    return [(name, _best(fn, runs, n)) for name, fn in stages]


def run(quick: bool = False) -> list[Row]:
    results = measure(2_000 if quick else 10_000, 3 if quick else 7)
    return [Row("shaping, per event", name, f"{us:.2f} µs") for name, us in results]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.shaping", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print_table("shaping, per event", run(args.quick))


if __name__ == "__main__":
    main()
