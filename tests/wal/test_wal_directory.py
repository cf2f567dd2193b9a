"""The WAL directory kept up to date from the watcher's events, in directories of many files.

Real files throughout; the watcher is the real one (inotify on the event loop, or
watchfiles' where a test says so) unless a test says it runs without one. Where a test
counts the stats and opens a start makes, it wraps ``os.stat`` and ``os.open`` with
counters that call the real functions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import Daemon, settle
from daemon_harness import expected_ids as delivered_ids
from inotify_simple import INotify as RealINotify
from test_follower import Reader, expected_ids, ids
from watchfiles import Change
from watchfiles._rust_notify import RustNotify as RealRustNotify
from watchfiles._rust_notify import WatchfilesRustInternalError

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.group_commit import GroupCommit, paced_writers
from eventsinkd.devtools.sim.nexus_writer import NexusWriter, run_workload
from eventsinkd.wal import directory as directory_module
from eventsinkd.wal import inotify as inotify_module
from eventsinkd.wal import watch as watch_module
from eventsinkd.wal.directory import SegmentDirectory
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import SharedReading
from eventsinkd.wal.scanner import WalScanner
from eventsinkd.wal.watch import Backend

LONG_AGO_NS = 10**12  # leftover segments are named this long before now: older than the rest


def add_empty(wal: Path, n: int, *, first_ns: int | None = None) -> list[str]:
    """``n`` empty segments, named from ``first_ns`` on (default: long before now)."""
    wal.mkdir(mode=0o700, parents=True, exist_ok=True)
    first = time.time_ns() - LONG_AGO_NS if first_ns is None else first_ns
    names = [f"wal-{first + k}.jsonl" for k in range(n)]
    for name in names:
        os.close(os.open(wal / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return names


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def reads(reader: Reader, n: int) -> list[str]:
    got = await reader.wait_for(n)
    await reader.settle()
    return got


# -- following, with and without the watcher ----------------------------------------------


@pytest.mark.parametrize("force_polling", [False, True], ids=["watch", "polling"])
async def test_appends_and_rewrites_among_many_empty_segments(
    wal_dir: Path, force_polling: bool
) -> None:
    """5,000 leftover empty segments, then a writer that pre-creates an empty segment after
    every batch in the last fifth of each segment (Nexus's group commit) and rewrites as it
    goes: every entry once, in order. With the watcher, the directory is listed once."""
    add_empty(wal_dir, 5_000)
    reader = Reader(wal_dir, force_polling=force_polling)
    writer = await asyncio.to_thread(
        run_workload,
        wal_dir,
        3_000,
        batch=2,
        rewrite_every=200,
        max_segment_bytes=64 * 1024,
        grow_after=True,
        rate_per_s=3_000,
    )
    expected = expected_ids(writer)
    got = await reads(reader, len(expected))
    await reader.close()
    assert got == expected
    empty = [s for s in writer.segments if not writer.line_count(s)]
    assert len(empty) >= 200  # the churn happened
    stats = reader.follower.scanner.stats
    assert stats.rejected == {} and stats.duplicates == 0
    directory = reader.follower.reading.directory
    if not force_polling:
        assert directory.lists <= 2  # the first listing (and one if the watch came after it)
    assert stats.segments == len(os.listdir(wal_dir))


async def test_new_segments_deletes_and_renames_are_followed(wal_dir: Path) -> None:
    """Segments renamed in (with data), renamed away and deleted while the watcher runs."""
    leftovers = add_empty(wal_dir, 1_000)
    w = NexusWriter(wal_dir, max_segment_bytes=16 * 1024, grow_after=True, seed=1)
    reader = Reader(wal_dir)
    await until(lambda: reader.follower.waker.watching, "the watch")
    w.append(20)
    assert len(await reads(reader, 20)) == 20
    directory = reader.follower.reading.directory
    # A segment written elsewhere and renamed in, newer than every other one.
    scratch = wal_dir.parent / "scratch"
    other = NexusWriter(scratch, precreate=False, seed=2)
    other.append(7)
    newest = f"wal-{time.time_ns() + 10**9}.jsonl"
    os.rename(scratch / other.active_segment, wal_dir / newest)
    assert len(await reads(reader, 27)) == 27
    # Leftovers deleted, a read segment renamed away, a pre-created empty one deleted.
    for name in leftovers[:500]:
        os.unlink(wal_dir / name)
    read = next(s for s in w.segments if w.line_count(s))
    os.rename(wal_dir / read, scratch / read)
    precreated = [s for s in w.segments if not w.line_count(s)]
    if precreated:
        os.unlink(wal_dir / precreated[0])
    await until(lambda: directory.refresh() == len(os.listdir(wal_dir)), "the names")
    await reader.close()
    assert reader.follower.scanner.error is None
    assert ids(reader.records) == expected_ids(w) + expected_ids(other)
    assert directory.lists <= 2


async def following(
    wal_dir: Path, seed: int, backend: Backend | None = None
) -> tuple[NexusWriter, SharedReading, Reader]:
    """A writer with 5 entries, read by a reader whose watch is live (polling every 50 ms)."""
    w = NexusWriter(wal_dir, max_segment_bytes=8 * 1024, precreate=False, seed=seed)
    w.append(5)
    reading = SharedReading(wal_dir, LineParser(), poll_interval_s=0.05)
    if backend is not None:
        reading.waker.backend = backend
    reader = Reader(wal_dir, reading=reading)
    reading.waker.start()
    await until(lambda: reading.waker.watching, "the watch")
    assert len(await reads(reader, 5)) == 5
    return w, reading, reader


async def read_past_new_segments(w: NexusWriter, reader: Reader, empty: int = 0) -> None:
    """Append until the writer moves on (past ``empty`` new empty segments); all read."""
    current = w.active_segment
    w.create_empty_segments(empty)
    while w.active_segment == current:
        w.append(5)
    w.append(5)
    assert await reads(reader, len(expected_ids(w))) == expected_ids(w)


async def close(reading: SharedReading, reader: Reader) -> None:
    await reader.close()
    await reading.waker.stop()
    reading.close()


async def test_a_segment_made_while_the_watch_is_down_is_found(wal_dir: Path) -> None:
    """The watch stopped (as when it fails): polling lists; the watch back: listed again."""
    w, reading, reader = await following(wal_dir, seed=3)
    await reading.waker.stop()
    assert not reading.directory.watched
    await read_past_new_segments(w, reader)  # made while nothing watches
    lists = reading.directory.lists
    reading.waker.start()
    await until(lambda: reading.waker.watching, "the watch again")
    await until(lambda: reading.directory.lists > lists, "the listing after the watch")
    await read_past_new_segments(w, reader, empty=3)
    await close(reading, reader)


class BreakableNotify:
    """watchfiles' real watcher (RustNotify), which fails as the kernel makes it fail when
    ``broken`` is set: a live watch's next step raises watchfiles' internal error, and a new
    watch cannot be made (inotify_init's EMFILE). Making the kernel refuse an inotify watch
    for real means exhausting the machine's per-user inotify limits, which would break
    every other watcher on it: this and :class:`BreakableINotify` are the stand-ins here."""

    broken = False
    made = 0
    failure = "inotify queue"

    def __init__(self, *args: object) -> None:
        if BreakableNotify.broken:
            raise OSError(24, "Too many open files (inotify_init)")
        self._real = RealRustNotify(*args)
        BreakableNotify.made += 1

    def watch(self, *args: object) -> object:
        result = self._real.watch(*args)
        if BreakableNotify.broken:
            raise WatchfilesRustInternalError("error in underlying watcher: inotify queue")
        return result

    def close(self) -> None:
        self._real.close()


class BreakableINotify(RealINotify):  # type: ignore[misc]
    """The real inotify descriptor on the loop, which fails as :class:`BreakableNotify` does:
    its next read raises, and a new one cannot be made."""

    broken = False
    made = 0
    failure = "inotify read"

    def __init__(self, *args: object, **kw: object) -> None:
        if BreakableINotify.broken:
            raise OSError(24, "Too many open files (inotify_init1)")
        super().__init__(*args, **kw)
        BreakableINotify.made += 1

    def read(self, *args: object, **kw: object) -> object:
        events = super().read(*args, **kw)
        if BreakableINotify.broken:
            raise OSError(5, "Input/output error (inotify read)")
        return events


@pytest.mark.parametrize("backend", ["inotify", "watchfiles"])
async def test_a_watcher_that_fails_while_running_hands_over_to_polling_and_comes_back(
    wal_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    backend: Backend,
) -> None:
    """The watch dies mid-run and cannot be made again for a while: the failure is logged
    once, the directory is listed at the poll interval, and segments made meanwhile are
    read; once a watch can be made again, it is live, and new segments are read through it."""
    caplog.set_level(logging.INFO, logger=watch_module.__name__)
    breakable: type[BreakableNotify] | type[BreakableINotify]
    if backend == "inotify":
        breakable = BreakableINotify
        monkeypatch.setattr(inotify_module, "INotify", BreakableINotify)
    else:
        breakable = BreakableNotify
        monkeypatch.setattr(watch_module, "RustNotify", BreakableNotify)
    monkeypatch.setattr(breakable, "broken", False)
    w, reading, reader = await following(wal_dir, seed=6, backend=backend)
    made = breakable.made

    breakable.broken = True
    w.append(1)  # a change, so the watch's next read (or step) returns, and fails, now
    await until(lambda: not reading.waker.watching, "the watch to fail")
    assert not reading.directory.watched
    lists = reading.directory.lists
    await read_past_new_segments(w, reader)  # which no watch reports
    assert reading.directory.lists > lists  # found by the listing that polling does
    failures = [r.getMessage() for r in caplog.records if "not watching" in r.getMessage()]
    assert len(failures) == 1, failures  # retried every poll interval, logged once
    assert "polling every 0.05s" in failures[0] and breakable.failure in failures[0]
    assert breakable.made == made

    breakable.broken = False
    await until(lambda: reading.waker.watching, "the watch to come back")
    assert breakable.made == made + 1 and reading.directory.watched
    await read_past_new_segments(w, reader, empty=3)
    await close(reading, reader)


# -- what the directory does with the watcher's changes -------------------------------------


def test_changes_are_decided_by_the_files_and_renames_over_a_segment_are_counted(
    tmp_path: Path,
) -> None:
    """A change set has no order: the file says what came last. A new name does not count
    as a file renamed in (nothing can follow entries in it yet); one over a segment does."""
    w = NexusWriter(tmp_path, precreate=False, seed=4)
    w.append(10)
    d = SegmentDirectory(tmp_path)
    d.watch_started()
    assert d.refresh() == 1
    listings = d.listings
    gone, back = add_empty(tmp_path, 2, first_ns=time.time_ns() + 10**9)
    os.unlink(tmp_path / gone)
    d.changed({(Change.added, str(tmp_path / gone)), (Change.deleted, str(tmp_path / gone))})
    d.changed({(Change.deleted, str(tmp_path / back)), (Change.added, str(tmp_path / back))})
    d.changed({(Change.added, str(tmp_path / "wal-1.tmp"))})  # not a segment
    assert d.refresh() == 2
    assert d.exists(back) and not d.exists(gone)
    assert d.listings == listings  # new names only
    w.rewrite(w.active_segment)
    d.changed({(Change.added, str(tmp_path / w.active_segment))})
    d.refresh()
    assert d.listings == listings + 1
    os.unlink(tmp_path / back)
    d.changed({(Change.deleted, str(tmp_path / back))})
    assert d.refresh() == 1
    assert d.listings == listings + 2


def test_a_survey_finds_what_no_event_reported(tmp_path: Path) -> None:
    """The safety net behind the watcher: a listing in the background, handed over as
    changes (as after an event queue overflow)."""
    w = NexusWriter(tmp_path, precreate=False, seed=5)
    w.append(3)
    d = SegmentDirectory(tmp_path)
    d.watch_started()
    d.refresh()
    first = w.active_segment
    assert d.first_with_data_after(first) is None
    w.create_empty_segments(2)
    w._rotate()  # a new segment with data, and no event about any of them
    w.append(3)
    assert d.refresh() == 1 and d.first_with_data_after(first) is None
    assert d.survey()
    assert d.refresh() == 4
    assert d.first_with_data_after(first) == w.active_segment
    assert not d.survey()
    assert d.lists == 1


def test_without_a_watcher_an_empty_segment_written_to_is_seen(tmp_path: Path) -> None:
    """Without events, the later segments are looked at again every poll interval."""
    w = NexusWriter(tmp_path, precreate=False, seed=6)
    w.append(3)
    d = SegmentDirectory(tmp_path, poll_interval_s=0.0)
    later = add_empty(tmp_path, 3, first_ns=time.time_ns() + 10**9)
    d.refresh()
    assert d.first_with_data_after(w.active_segment) is None
    with (tmp_path / later[1]).open("ab") as fh:  # as Nexus after a restart, say
        fh.write((tmp_path / w.active_segment).read_bytes())
    d.refresh()
    assert d.first_with_data_after(w.active_segment) == later[1]


def test_a_long_run_of_empty_segments_is_crossed_a_part_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directory_module, "SCAN_BUDGET", 100)
    add_empty(tmp_path, 1_000)
    w = NexusWriter(tmp_path, precreate=False, seed=7)
    w.append(5)
    add_empty(tmp_path, 1_000, first_ns=time.time_ns() + 10**9)
    w2 = NexusWriter(tmp_path, precreate=False, seed=8)  # a newer segment, after the run
    w2.append(5)
    scanner = WalScanner(tmp_path, LineParser(), "beginning")
    got, empty_batches = [], 0
    while (batch := scanner.step()) is not None:
        got += batch.records
        empty_batches += not batch.records
    scanner.close()
    assert [r.entry.payload_id for r in got] == expected_ids(w) + expected_ids(w2)
    assert empty_batches >= 20  # two runs of 1,000, 100 at a time


# -- starting in a big directory --------------------------------------------------------------


class Counted:
    """``os.stat`` and ``os.open`` of paths in one directory, counted (the real calls run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wal: Path) -> None:
        self.stats = self.opens = 0
        prefix = str(wal)
        real_stat, real_open = os.stat, os.open

        def stat(path: object, *a: object, **kw: object) -> os.stat_result:
            if str(path).startswith(prefix):
                self.stats += 1
            return real_stat(path, *a, **kw)  # type: ignore[arg-type]

        def open_(path: object, *a: object, **kw: object) -> int:
            if str(path).startswith(prefix):
                self.opens += 1
            return real_open(path, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("start", ["end", "saved"])
async def test_start_among_50000_empty_segments_looks_at_few(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """What a long-running Nexus leaves: 50,000 empty segments older than the one in use.
    Starting at the end or at a saved position stats and opens a few files, not all."""
    add_empty(wal_dir, 50_000)
    w = NexusWriter(wal_dir, max_segment_bytes=16 * 1024, seed=9)
    for _ in range(8):
        w.append(5)
    before = len(expected_ids(w))
    at: Position | str = "end"
    if start == "saved":
        last = w.written[-1]
        at = Position(last.segment, last.line + 1, last.idempotency_key)
    counted = Counted(monkeypatch, wal_dir)
    reader = Reader(wal_dir, start=at)
    await until(lambda: reader.follower.ready, "ready")
    assert counted.stats + counted.opens < 1_000, (counted.stats, counted.opens)
    w.append(5)
    w.rewrite_recent()
    w.append(5)
    got = await reads(reader, 10)
    await reader.close()
    assert got == expected_ids(w)[before:]


async def test_what_is_appended_once_ready_is_read_however_long_the_start_took(
    wal_dir: Path,
) -> None:
    """Starting at the end walks back over 20,000 empty segments newer than the last one
    with data; "ready" comes after that, so an entry appended then is read, not skipped."""
    w = NexusWriter(wal_dir, precreate=False, seed=10)
    w.append(5)
    add_empty(wal_dir, 20_000, first_ns=time.time_ns() + 10**9)
    reader = Reader(wal_dir, start="end")
    await until(lambda: reader.follower.ready, "ready")
    w.append(3)
    got = await reads(reader, 3)
    await reader.close()
    assert got == expected_ids(w)[5:]


async def test_the_daemon_in_a_directory_of_50000_files(
    new_daemon: Callable[..., Daemon], receiver: WebhookServer
) -> None:
    """The real daemon, 50,000 leftover empty segments and Nexus's group commit (4 writers,
    a new file per batch near the end of each segment): ready, and every entry delivered
    once."""
    d = new_daemon([{"name": "s", "url": receiver.url}])
    add_empty(d.wal, 50_000)
    commit = GroupCommit(NexusWriter(d.wal, max_segment_bytes=64 * 1024, grow_after=True))
    await asyncio.to_thread(paced_writers, commit, 500, 1.0, 4, lambda _c: None)
    await d.start()
    await asyncio.to_thread(paced_writers, commit, 500, 2.0, 4, lambda _c: None)
    commit.close()
    want = delivered_ids(commit.writer)
    await receiver.wait_for(len(want), timeout_s=60)
    await settle(d)
    assert sorted(receiver.ids) == sorted(want)
