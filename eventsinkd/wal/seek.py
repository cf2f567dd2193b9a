"""Find where a cursor should go back to: the beginning, a time, or one memory's entry."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from eventsinkd.events import parse_go_time
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import WalScanner

BEGINNING = Position("", 0)


def parse_target(value: str) -> Position | float | str:
    """``beginning``, an RFC 3339 time (as Unix seconds), or a payload_id."""
    if value == "beginning":
        return BEGINNING
    when = parse_go_time(value)
    if when is not None:
        return when
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return value
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone: add Z or an offset like +02:00")
    return dt.timestamp()


def position_before(wal_dir: Path, parser: LineParser, target: float | str) -> Position | None:
    """The position just before the first data entry at or after time ``target``, or with
    payload_id ``target``; None when there is none. Reads the WAL from the beginning."""
    scanner = WalScanner(wal_dir, parser, "beginning", batch_lines=4096)
    try:
        prev = BEGINNING
        while True:
            batch = scanner.step()
            if batch is None:
                if scanner.error is not None:
                    raise OSError(scanner.error)
                return None
            for rec in batch.records:
                entry = rec.entry
                if entry.is_data and _matches(entry.payload_id, entry.timestamp, target):
                    # Resume after the line before it: its key if it was the previous record.
                    before = rec.line - 1
                    key = prev.last_key if prev.key() == (rec.segment, before) else ""
                    return Position(rec.segment, before, key)
                prev = rec.position
    finally:
        scanner.close()


def _matches(payload_id: str, timestamp: str, target: float | str) -> bool:
    if isinstance(target, str):
        return payload_id == target
    ts = parse_go_time(timestamp)
    return ts is not None and ts >= target
