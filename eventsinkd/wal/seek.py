"""Find where a cursor should go back to: the beginning, a time, or one memory's entry."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Generator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from eventsinkd.wal.batches import Record
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.gotime import parse_go_time_ns
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import WalScanner

BEGINNING = Position("", 0)
_LOOKS_LIKE_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d")


class Time(NamedTuple):
    ns: int  # Unix nanoseconds, exact (WAL times have 9 fraction digits)

    @property
    def seconds(self) -> float:
        return self.ns / 1e9


def parse_target(value: str) -> Position | Time | str:
    """``beginning``, an RFC 3339 time, or else a payload_id.

    Raises ValueError for something that looks like a time but is not one with a zone.
    """
    if value == "beginning":
        return BEGINNING
    if not _LOOKS_LIKE_TIME.match(value):
        return value
    ns = parse_go_time_ns(value.replace(" ", "T", 1).replace("t", "T", 1))
    if ns is not None:
        return Time(ns)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 time") from None
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone: add Z or an offset like +02:00")
    return Time(int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000)


def position_before(wal_dir: Path, parser: LineParser, target: Time | str) -> Position | None:
    """The position just before the first data entry at or after time ``target``, or with
    payload_id ``target``; None when there is none. Reads the WAL from the beginning."""
    prev = BEGINNING
    with contextlib.closing(_records(wal_dir, parser, BEGINNING)) as records:
        for rec in records:
            entry = rec.entry
            if entry.is_data and _matches(entry.payload_id, entry.timestamp, target):
                # Resume after the line before it: its key if it was the previous record.
                before = rec.line - 1
                key = prev.last_key if prev.key() == (rec.segment, before) else ""
                return Position(rec.segment, before, key)
            prev = rec.position
    return None


def _matches(payload_id: str, timestamp: str, target: Time | str) -> bool:
    if isinstance(target, str):
        return payload_id == target
    ns = parse_go_time_ns(timestamp)
    return ns is not None and ns >= target.ns


def count_between(
    wal_dir: Path,
    parser: LineParser,
    start: Position,
    end: Position,
    wanted: Callable[[Entry], bool],
) -> int:
    """How many entries ``wanted`` takes between ``start`` and ``end``: those a cursor moved
    from ``start`` to ``end`` would never read."""
    if end.key() <= start.key():
        return 0
    n = 0
    with contextlib.closing(_records(wal_dir, parser, start)) as records:
        for rec in records:
            if (rec.segment, rec.line) > end.key():
                break
            n += wanted(rec.entry)
    return n


def _records(wal_dir: Path, parser: LineParser, start: Position) -> Generator[Record, None, None]:
    """Every record from ``start`` to the end of the WAL as it is now, read with the reader
    the sinks use (same resume, same rotation-duplicate rules); OSError if it cannot be read."""
    scanner = WalScanner(wal_dir, parser, start, batch_lines=4096)
    try:
        while (batch := scanner.step()) is not None:
            yield from batch.records
        if scanner.error is not None:
            raise OSError(scanner.error)
    finally:
        scanner.close()
