"""What a scanner's lines become: records of new entries, each data entry once, counted once.

:class:`Batcher` is the hot loop of catching up: per line, parse it (or take the parse
another cursor shared), count a reject, skip a duplicate of a recent key (Nexus writes
the same idempotency key at the end of one segment and the start of the next after a
crash during rotation), and make the record. Counters are the process's, not the
cursor's: a line read by several cursors counts once, for the first that reads it
(:class:`eventsinkd.wal.reading.Coverage`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, Reject
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import SharedReading
from eventsinkd.wal.statuses import StatusChange


class Record(NamedTuple):
    entry: Entry
    segment: str
    line: int  # lines of the segment consumed once this entry's line is

    @property
    def position(self) -> Position:
        """The position just after this entry's line (built on demand: block mode needs it)."""
        return Position(self.segment, self.line, self.entry.dedup_key)


@dataclass(slots=True)
class Batch:
    records: list[Record]
    end: Position  # read position after every line behind this batch
    statuses: Sequence[StatusChange] = ()  # status events (with a StatusWatch), after records


class RecentKeys:
    """A bounded set of the most recent dedup keys, oldest evicted first."""

    def __init__(self, size: int) -> None:
        self.order: deque[str] = deque()
        self.keys: set[str] = set()
        self.size = size

    def seen(self, key: str) -> bool:
        """True if ``key`` is in the window; otherwise remember it."""
        keys = self.keys
        if key in keys:
            return True
        keys.add(key)
        self.order.append(key)
        if len(self.order) > self.size:
            keys.discard(self.order.popleft())
        return False


class Batcher:
    """One cursor's lines into records; ``owner`` is the cursor's scanner (its coverage)."""

    def __init__(
        self, owner: object, reading: SharedReading, parser: LineParser, batch_lines: int
    ) -> None:
        self._owner = owner
        self._reading = reading
        self._parser = parser
        self._batch_lines = batch_lines

    def records(
        self, name: str, first: int, lines: list[bytes | None], recent: RecentKeys
    ) -> tuple[list[Record], str]:
        """Records of ``lines``, lines ``first + 1``... of segment ``name``; and the dedup
        key of the last line ("" if it has none or was rejected)."""
        reading = self._reading
        last = first + len(lines)
        others = reading.coverage.claim(self._owner, (name, first), (name, last))
        if not others:
            fresh = None  # every line is new to this process: this cursor counts them
        elif any(s <= (name, first) and (name, last) <= e for s, e in others):
            fresh = frozenset[int]()  # another cursor read (and counted) all of them
        else:
            fresh = frozenset(
                n
                for n in range(first + 1, last + 1)
                if not any(s < (name, n) <= e for s, e in others)
            )
        parse: Callable[[bytes], Entry | Reject]
        if not reading.shared:
            parse = self._parser.parse
        elif fresh is None and len(lines) < self._batch_lines:
            # New lines at the head of the WAL (a short batch: all there was): the
            # cursors behind will read them next. A cursor catching up on old lines
            # (full batches) would only push those out of the cache.
            parse = self._parse_and_share
        else:
            parse = self._parse_shared
        records: list[Record] = []
        append = records.append
        line_no = first
        keys, order, window = recent.keys, recent.order, recent.size
        counts: dict[str, int] = {}
        duplicates = 0
        key = ""
        for raw in lines:
            line_no += 1
            entry = Reject.TOO_LONG if raw is None else parse(raw)
            if isinstance(entry, Reject):
                if fresh is None or line_no in fresh:
                    self.reject(entry, name, line_no)
                key = ""
                continue
            key = entry.idempotency_key or entry.payload_id
            if fresh is None or line_no in fresh:
                kind = entry.entry_type
                counts[kind] = counts.get(kind, 0) + 1
            if key:
                # RecentKeys.seen(), inlined: this loop runs once per WAL line.
                if key in keys:
                    if fresh is None or line_no in fresh:
                        duplicates += 1
                    continue
                keys.add(key)
                order.append(key)
                if len(order) > window:
                    keys.discard(order.popleft())
            append(Record(entry, name, line_no))
        stats = reading.stats
        stats.lines += len(lines) if fresh is None else len(fresh)
        stats.entries.update(counts)
        stats.duplicates += duplicates
        return records, key

    def _parse_and_share(self, raw: bytes) -> Entry | Reject:
        cache = self._reading.cache
        got = cache.get(raw)
        if got is None:
            got = self._parser.parse(raw)
            cache.put(raw, got)
        return got

    def _parse_shared(self, raw: bytes) -> Entry | Reject:
        got = self._reading.cache.get(raw)
        return self._parser.parse(raw) if got is None else got

    def reject(self, reason: Reject, segment: str, line_no: int) -> None:
        """Count a line skipped (the warning is rate-limited)."""
        reading = self._reading
        reading.stats.rejected[reason.value] += 1
        reading.rlog.log(
            logging.WARNING,
            f"reject:{reason.value}",
            "skipped %s line: segment %s line %d",
            reason.value,
            segment,
            line_no,
        )
