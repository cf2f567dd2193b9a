"""``eventsinkd verify``: scan every segment at rest and report what it holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from eventsinkd.events import STATUS_EVENTS
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, Reject
from eventsinkd.wal.segments import SegmentFile, list_segments

MAX_LISTED = 5  # line numbers shown per rejection reason and segment


@dataclass(slots=True)
class SegmentReport:
    name: str
    lines: int = 0
    entries: Counter[str] = field(default_factory=Counter)  # "type/status"
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_at: dict[str, list[int]] = field(default_factory=dict)
    incomplete_tail: bool = False
    duplicates: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # data entries emitted, by status


def scan_segment(wal_dir: Path, name: str, parser: LineParser, seen: set[str]) -> SegmentReport:
    report = SegmentReport(name)
    seg = SegmentFile(wal_dir, name)
    try:
        for n, raw in seg.numbered_lines():
            entry: Entry | Reject = Reject.TOO_LONG if raw is None else parser.parse(raw)
            if isinstance(entry, Reject):
                report.rejected[entry.value] += 1
                at = report.rejected_at.setdefault(entry.value, [])
                if len(at) < MAX_LISTED:
                    at.append(n)
                continue
            kind = entry.entry_type or "data"
            report.entries[f"{kind}/{entry.status or '-'}"] += 1
            key = entry.dedup_key
            if key and key in seen:
                report.duplicates += 1
            elif entry.is_data:
                report.statuses[entry.status] += 1
            seen.add(key)
        report.lines = seg.line
        report.incomplete_tail = seg.pending_tail
    finally:
        seg.close()
    return report


def verify(wal_dir: Path, parser: LineParser, out: TextIO) -> int:
    """Print a report per segment; 1 if any line was rejected, 0 otherwise."""
    names = list_segments(wal_dir)
    seen: set[str] = set()
    total_rejected: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    empty = 0
    for name in names:
        report = scan_segment(wal_dir, name, parser, seen)
        if report.lines == 0 and not report.incomplete_tail:
            empty += 1
            continue
        total_rejected.update(report.rejected)
        statuses.update(report.statuses)
        print(f"{name}: {report.lines} lines", file=out)
        for kind, n in sorted(report.entries.items()):
            print(f"  entries {kind}: {n}", file=out)
        for reason, n in sorted(report.rejected.items()):
            at = ", ".join(str(x) for x in report.rejected_at[reason])
            more = ", ..." if n > len(report.rejected_at[reason]) else ""
            print(f"  rejected {reason}: {n} (line {at}{more})", file=out)
        if report.duplicates:
            print(f"  repeated idempotency keys (emitted once): {report.duplicates}", file=out)
        if report.incomplete_tail:
            print("  last line has no newline yet (being written, or torn by a crash)", file=out)
    print(f"{len(names)} segments ({empty} empty)", file=out)
    # What a reader from the beginning emits: a memory_written per data entry (repeated
    # keys once) and, with events.types asking for them, a status event per final status.
    by_status = ", ".join(f"{s or '-'}={n}" for s, n in sorted(statuses.items())) or "none"
    print(f"memory_written events: {sum(statuses.values())} ({by_status})", file=out)
    events = ", ".join(
        f"{kind}={statuses[status]}" for status, kind in sorted(STATUS_EVENTS.items())
    )
    print(f"status events: {events}", file=out)
    if not parser.checks_mac:
        print("HMAC fields not checked (no --mac-key)", file=out)
    if total_rejected:
        summary = ", ".join(f"{r}={n}" for r, n in sorted(total_rejected.items()))
        print(f"rejected lines: {summary}", file=out)
        return 1
    print("rejected lines: none", file=out)
    return 0
