"""Several cursors on one WAL directory: read independently, counted once, parsed once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import FIXTURES

from eventsinkd.wal.batches import Record
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, Reject
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import Coverage, SharedReading
from eventsinkd.wal.scanner import StartAt, WalScanner
from eventsinkd.wal.watch import Waker

CORRUPTED = FIXTURES / "corrupted" / "wal"


class CountingParser(LineParser):
    """The real parser, counting the lines it had to parse."""

    def __init__(self) -> None:
        super().__init__()
        self.parsed = 0

    def parse(self, line: bytes) -> Entry | Reject:
        self.parsed += 1
        return super().parse(line)


def read_all(scanner: WalScanner, limit: int | None = None) -> list[Record]:
    """Step ``scanner`` until it is at the end (or has ``limit`` records)."""
    out: list[Record] = []
    while limit is None or len(out) < limit:
        batch = scanner.step()
        if batch is None:
            break
        out.extend(batch.records)
    return out


def scanner(reading: SharedReading, start: Position | StartAt = "beginning") -> WalScanner:
    return WalScanner(reading.wal_dir, reading.parser, start, batch_lines=64, reading=reading)


def alone() -> tuple[list[Record], dict[str, int], int]:
    """What one cursor reads and counts in the corrupted fixture."""
    reading = SharedReading(CORRUPTED, LineParser())
    records = read_all(scanner(reading))
    return records, dict(reading.stats.rejected), reading.stats.lines


def test_cursors_read_the_same_records_and_count_each_line_once() -> None:
    want, rejected, lines = alone()
    assert rejected == json.loads((CORRUPTED.parent / "expected_errors.json").read_text())
    reading = SharedReading(CORRUPTED, LineParser())
    cursors = [scanner(reading) for _ in range(3)]
    # Interleaved, as the event loop runs them: each one a batch at a time.
    got: list[list[Record]] = [[], [], []]
    while True:
        batches = [c.step() for c in cursors]
        if all(b is None for b in batches):
            break
        for out, b in zip(got, batches, strict=True):
            if b is not None:
                out.extend(b.records)
    assert all(g == want for g in got)
    assert dict(reading.stats.rejected) == rejected
    assert reading.stats.lines == lines


def test_cursors_that_keep_up_parse_each_line_once(tmp_path: Path) -> None:
    from eventsinkd.devtools.sim.nexus_writer import NexusWriter

    w = NexusWriter(tmp_path, precreate=False, max_segment_bytes=50 << 20)  # one segment
    parser = CountingParser()
    reading = SharedReading(tmp_path, parser)
    cursors = [scanner(reading) for _ in range(3)]
    got: list[list[Record]] = [[], [], []]
    for _ in range(30):
        w.append(10)
        for out, c in zip(got, cursors, strict=True):
            out.extend(read_all(c))
    assert got[0] and got[0] == got[1] == got[2]
    # The first cursor parsed each line; the others found it in the shared cache.
    assert parser.parsed == reading.stats.lines == 300


def test_a_lagging_cursor_counts_only_what_no_other_cursor_read(tmp_path: Path) -> None:
    _, rejected, lines = alone()
    reading = SharedReading(CORRUPTED, LineParser())
    ahead = scanner(reading)
    half = read_all(ahead, limit=40)
    middle = ahead.position
    rest = read_all(ahead)
    assert rest and half
    # Another cursor starts where the first one is now, then one from the very beginning.
    late = scanner(reading, middle)
    read_all(late)
    behind = scanner(reading)
    assert read_all(behind) == half + rest
    assert reading.stats.lines == lines
    assert dict(reading.stats.rejected) == rejected


def test_a_cursor_that_starts_ahead_leaves_the_rest_to_a_lagging_one() -> None:
    _, rejected, lines = alone()
    reading = SharedReading(CORRUPTED, LineParser())
    probe = scanner(SharedReading(CORRUPTED, LineParser()))
    read_all(probe, limit=30)
    middle = probe.position
    probe.close()
    ahead = scanner(reading, middle)
    read_all(ahead)
    ahead.close()  # a closed cursor's stretch still counts as read
    behind = scanner(reading)
    read_all(behind)
    assert reading.stats.lines == lines
    assert dict(reading.stats.rejected) == rejected


def test_coverage_merges_the_stretches_of_closed_cursors() -> None:
    cov = Coverage()
    a, b, c = object(), object(), object()
    assert cov.claim(a, ("s1", 0), ("s1", 10)) == []
    assert cov.claim(a, ("s2", 0), ("s2", 5)) == []  # the next segment: still one stretch
    cov.end(a)
    assert cov.claim(b, ("s1", 5), ("s1", 20)) == [(("s1", 0), ("s2", 5))]
    cov.end(b)
    # The two closed stretches overlap: one remains.
    assert cov.claim(c, ("s0", 0), ("s0", 1)) == []
    assert cov.claim(c, ("s3", 0), ("s3", 2)) == []
    assert cov._closed == [(("s1", 0), ("s2", 5))]


async def test_a_change_wakes_every_waiting_cursor(tmp_path: Path) -> None:
    waker = Waker(tmp_path, poll_interval_s=30, force_polling=True)
    seen = waker.generation
    waiters = [asyncio.create_task(waker.wait(seen)) for _ in range(3)]
    await asyncio.sleep(0)
    waker.notify()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    # A change that came while a cursor was busy is not missed by its next wait.
    await asyncio.wait_for(waker.wait(seen), 5)


@pytest.mark.parametrize("cursors", [1, 4])
def test_rewrites_are_counted_once(tmp_path: Path, cursors: int) -> None:
    from eventsinkd.devtools.sim.nexus_writer import NexusWriter

    w = NexusWriter(tmp_path, precreate=False)
    w.append(20)
    reading = SharedReading(tmp_path, LineParser())
    scanners = [scanner(reading) for _ in range(cursors)]
    for s in scanners:
        read_all(s)
    w.rewrite_recent()
    w.append(5)
    for s in scanners:
        assert len(read_all(s)) == 5
    assert reading.stats.rewrites == 1
    assert reading.stats.lines == 25
