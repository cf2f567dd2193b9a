"""Go timestamps as the WAL has them: the exact parser, and its shortcut for a known second."""

from __future__ import annotations

import zlib

import orjson
import pytest
from conftest import ODD_GO_TIMESTAMPS
from msgspec.structs import replace

from eventsinkd import events
from eventsinkd.wal import gotime
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.gotime import _parse_go_time_ns, parse_go_time_ns
from eventsinkd.wal.lines import LineParser


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-04-10T12:34:56Z",
        "2026-04-10T12:34:56.5Z",
        "2026-04-10T12:34:56.123456789Z",
        "2026-04-10T12:34:56.000000001Z",
        *ODD_GO_TIMESTAMPS,
    ],
)
def test_go_times_of_a_second_already_read_are_exact(stamp: str) -> None:
    gotime._seconds.clear()
    assert parse_go_time_ns("2026-04-10T12:34:56.9Z") == 1775824496900000000  # exact, kept
    assert list(gotime._seconds) == ["2026-04-10T12:34:56"]
    assert parse_go_time_ns(stamp) == _parse_go_time_ns(stamp)  # the shortcut, or exact


def test_go_times_keep_a_bounded_number_of_seconds() -> None:
    stamps = [f"2026-04-10T12:{m:02d}:{s:02d}.25Z" for m in range(3) for s in range(60)]
    twice = stamps + stamps
    assert [parse_go_time_ns(x) for x in twice] == [_parse_go_time_ns(x) for x in twice]
    assert len(gotime._seconds) <= gotime.SECONDS_KEPT


def test_a_status_event_is_memory_written_with_its_type_and_status() -> None:
    """Same fields, its own event_type, ``status`` added (before content), its own id."""
    from engine_harness import entry

    e = entry(5, status="PERMANENT_FAILURE")
    assert events.status_event_type(e) == "memory_write_failed"
    assert events.status_event_type(replace(e, status="DELIVERED")) == "memory_persisted"
    assert events.status_event_type(replace(e, status="PENDING")) is None
    assert events.status_event_type(replace(e, entry_type="checkpoint")) is None
    written = orjson.loads(events.event_body(e, "full"))
    failed = orjson.loads(events.event_body(e, "full", "memory_write_failed"))
    assert list(failed) == [*list(written)[:-1], "status", "content"]
    assert failed == {
        **written,
        "event_type": "memory_write_failed",
        "status": "PERMANENT_FAILURE",
    }
    assert "status" not in written
    ev = events.Event("memory_write_failed", e, ("summary",))
    assert ev.id == "memory_write_failed:p000005"
    assert ev.timestamp == e.timestamp  # the append time, not when the status changed


def test_full_content_is_the_payload_as_the_wal_line_has_it() -> None:
    """The payload is not decoded and encoded again: its text goes out as Nexus (Go's
    json.Marshal) wrote it, escapes and number forms included, and a number orjson cannot
    hold (an integer over 64 bits, which Go reads as a float) does not cost the entry."""
    payload = b'{"n":123456789012345678901234567890,"t":"a\\u0008b \\u003ctag\\u003e","f":1e+21}'
    doc = b'{"version":2,"payload_id":"p","payload":' + payload + b',"entry_type":""}'
    entry = LineParser().parse(doc + b"\t" + b"%08x" % zlib.crc32(doc))
    assert isinstance(entry, Entry) and entry.payload_json == payload
    assert events.event_body(entry, "full").endswith(b',"content":' + payload + b"}")
    assert b"content" not in events.event_body(entry, "summary")
    assert orjson.loads(events.event_body(entry, "summary"))["payload_id"] == "p"
