"""Status events from the reader: every entry's final status once, through rewrites,
rotation, restarts and crashes (the daemon around it: tests/wal/test_status_events.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURE_SETS, FIXTURES, fixture_mac_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lines_properties import reference_parse

from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.events import MEMORY_PERSISTED, MEMORY_WRITE_FAILED, STATUS_EVENTS
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import SharedReading
from eventsinkd.wal.scanner import StartAt, WalScanner
from eventsinkd.wal.statuses import GONE, LIMIT, StatusWatch

Saved = tuple[Position, dict[str, Any]]


class Reader:
    """One cursor with a StatusWatch, stepped by hand; each status change is finished as soon
    as it is handed over (drop mode), unless ``hold`` (block mode, event not finished yet)."""

    def __init__(
        self,
        wal: Path,
        start: Position | StartAt = "beginning",
        saved: dict[str, Any] | None = None,
        *,
        key: bytes | None = None,
        limit: int = 100_000,
    ) -> None:
        self.watch = StatusWatch(lambda _entry: True, limit)
        if saved is not None:
            self.watch.restore(json.loads(json.dumps(saved)))  # as the state file holds it
        reading = SharedReading(wal, LineParser(key))
        # Relist the directory at every step: the scanner's view of rewrites of segments
        # behind it is then decided by the files alone, not by how fast the test runs.
        reading.directory.poll_interval_s = 0.0
        self.scanner = WalScanner(wal, LineParser(key), start, reading=reading, statuses=self.watch)
        self.written: list[str] = []  # payload_ids of memory_written, in order
        self.changes: list[tuple[str, str]] = []  # (event type, payload_id), in order
        self.hold = False
        self.held: list[Any] = []

    def drain(self) -> None:
        while (batch := self.scanner.step()) is not None:
            self.written += [r.entry.payload_id for r in batch.records if r.entry.is_data]
            for change in batch.statuses:
                self.changes.append((STATUS_EVENTS[change.entry.status], change.entry.payload_id))
                if self.hold:
                    self.held.append(change)
                else:
                    self.watch.finished(change)
        assert self.scanner.error is None, self.scanner.error

    def save(self) -> Saved:
        return self.scanner.position, self.watch.saved()

    def close(self) -> None:
        self.scanner.close()


def final_statuses(wal: Path, key: bytes | None) -> dict[str, str]:
    """payload_id -> status of every data entry a reader emits (first copy of a key), read
    from the files with the spec's reference parser."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name in sorted(os.listdir(wal)):
        if not name.endswith(".jsonl"):
            continue
        data = (wal / name).read_bytes()
        for line in data.split(b"\n")[: data.count(b"\n")]:
            entry = reference_parse(line, key)
            if entry is None or entry.entry_type:
                continue
            dedup = entry.idempotency_key or entry.payload_id
            if dedup not in seen:
                seen.add(dedup)
                out[entry.payload_id] = entry.status
    return out


def expected_changes(statuses: dict[str, str]) -> dict[str, str]:
    return {pid: STATUS_EVENTS[s] for pid, s in statuses.items() if s in STATUS_EVENTS}


def writer_statuses(w: NexusWriter) -> dict[str, str]:
    return {x.payload_id: w.status(x) for x in w.expected_data()}


def grow(w: NexusWriter, reader: Reader, appends: int, n: int) -> None:
    """``appends`` group commits of ``n`` entries, each read as it lands."""
    for _ in range(appends):
        w.append(n)
        reader.drain()


def assert_once_each(reader: Reader, statuses: dict[str, str]) -> None:
    got = dict((pid, kind) for kind, pid in reader.changes)
    assert len(got) == len(reader.changes), "a status event came twice"
    assert got == expected_changes(statuses)


# -- WALs Nexus wrote -----------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_fixture_status_events_are_the_entries_marked_final(name: str) -> None:
    """Every entry is read for the first time, so each marked one gives memory_written and
    then its status event; the ones still PENDING are remembered."""
    d = FIXTURES / name
    key = fixture_mac_key(name)
    reader = Reader(d / "wal", key=key)
    reader.drain()
    statuses = final_statuses(d / "wal", key)
    assert sorted(reader.written) == (d / "expected_ids.txt").read_text().split()
    assert_once_each(reader, statuses)
    written_at = {pid: i for i, pid in enumerate(reader.written)}
    assert all(pid in written_at for _, pid in reader.changes)
    assert reader.watch.pending == sum(s == "PENDING" for s in statuses.values())
    reader.close()
    print(
        f"\n{name}: {len(statuses)} data entries, {len(reader.changes)} status events, "
        f"{reader.watch.pending} PENDING"
    )


def test_the_fixtures_hold_both_marked_and_pending_entries() -> None:
    """What the test above stands on: marked and PENDING entries in the sets Nexus wrote."""
    seen = {
        s for name in FIXTURE_SETS for s in final_statuses(FIXTURES / name / "wal", None).values()
    }
    assert {"DELIVERED", "PENDING"} <= seen


# -- a live writer -----------------------------------------------------------------------------


def test_marks_behind_the_cursor_on_the_segment_being_read_and_across_a_restart(
    tmp_path: Path,
) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=8 * 1024, seed=3)
    reader = Reader(w.wal_dir)
    grow(w, reader, 6, 10)  # several segments, all PENDING
    assert not reader.changes and reader.watch.pending == 60
    first = w.segments[0]
    w.rewrite(first, fraction=0.5)  # behind the cursor
    w.rewrite(fraction=0.5, failed=1.0)  # the segment being read
    reader.drain()
    assert_once_each(reader, writer_statuses(w))
    assert {k for k, _ in reader.changes} == {MEMORY_PERSISTED, MEMORY_WRITE_FAILED}

    # The same segments rewritten again and again: only the entries newly marked come out.
    for _ in range(3):
        w.rewrite(first, fraction=0.3)
        w.rewrite(fraction=0.3)
        w.append(5)
        reader.drain()
    assert_once_each(reader, writer_statuses(w))

    # A restart: what the cursor remembers comes back from its saved state.
    pos, saved = reader.save()
    reader.close()
    w.rewrite(first, fraction=1.0)  # marked while nobody reads
    w.rewrite(fraction=1.0)
    again = Reader(w.wal_dir, pos, saved)
    again.changes = reader.changes
    again.drain()
    assert_once_each(again, writer_statuses(w))
    assert again.watch.pending == sum(s == "PENDING" for s in writer_statuses(w).values())
    again.close()


def test_an_unfinished_status_event_is_sent_again_after_a_crash(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=4 * 1024, precreate=False, seed=4)
    reader = Reader(w.wal_dir)
    grow(w, reader, 3, 5)
    behind, current = w.segments[0], w.segments[-1]
    assert behind != current
    reader.hold = True  # block mode: the events are handed over but not finished
    w.rewrite(behind, fraction=0.6)  # a segment behind the cursor...
    w.rewrite(current, fraction=0.6)  # ...and the one being read
    w.append(1)
    reader.drain()
    held = {c.entry.payload_id for c in reader.held}
    assert len(held) == len(reader.changes) == 3 + 3
    pos, saved = reader.save()  # what a save just before the kill left behind
    reader.close()

    again = Reader(w.wal_dir, pos, saved)
    again.drain()
    assert {pid for _, pid in again.changes} == held  # the same events, the same ids

    # Once finished, an event is not saved again.
    for change in reader.held:
        reader.watch.finished(change)
    pos, saved = reader.save()
    third = Reader(w.wal_dir, pos, saved)
    third.drain()
    assert third.changes == []


def test_a_restart_behind_the_read_position_reads_its_pending_entries_again(
    tmp_path: Path,
) -> None:
    """Block mode saves the position of the oldest unfinished event, behind what was read
    (and remembered as PENDING): those lines are read again, not forgotten or doubled."""
    w = NexusWriter(tmp_path / "wal", seed=10)
    reader = Reader(w.wal_dir)
    grow(w, reader, 2, 5)
    pos, saved = reader.save()
    reader.close()
    w.rewrite(fraction=1.0)
    again = Reader(w.wal_dir, Position(pos.segment, 5), saved)
    again.drain()
    assert again.watch.forgotten == {}
    assert_once_each(again, writer_statuses(w))
    assert again.written == [x.payload_id for x in w.expected_data()][5:]


def test_pending_entries_beyond_the_limit_are_forgotten_and_counted(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=4 * 1024, precreate=False, seed=5)
    reader = Reader(w.wal_dir, limit=12)
    grow(w, reader, 6, 5)
    assert reader.watch.pending <= 12
    assert reader.watch.forgotten[LIMIT] == 30 - reader.watch.pending
    for name in w.segments:
        w.rewrite(name, fraction=1.0)
    w.append(1)
    reader.drain()
    # The newest entries were kept: exactly those give their status events.
    marked = [x.payload_id for x in w.expected_data()][:30]
    kept = {pid for _, pid in reader.changes}
    assert len(kept) == 30 - reader.watch.forgotten[LIMIT]
    assert kept == set(marked[30 - len(kept) :])


def test_a_deleted_segment_is_forgotten_and_counted(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=2 * 1024, precreate=False, seed=6)
    reader = Reader(w.wal_dir)
    grow(w, reader, 4, 3)
    first = w.segments[0]
    lost = len(reader.watch.lines_in(first) or ())
    assert lost
    (w.wal_dir / first).unlink()
    w.append(1)
    reader.drain()
    assert reader.watch.forgotten[GONE] == lost
    assert reader.watch.lines_in(first) is None


def test_a_saved_state_that_makes_no_sense_is_refused() -> None:
    watch = StatusWatch(lambda _e: True, 10)
    for doc in (
        None,
        {"version": 99},
        {"version": 1, "segments": []},
        {"version": 1, "segments": {"wal-1.jsonl": [None, [[5, 1]]]}},
        {"version": 1, "segments": {"wal-1.jsonl": [None, [[1, 10**12]]]}},
    ):
        with pytest.raises(ValueError):
            watch.restore(doc)


# -- random interleavings -------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 12)),
        st.tuples(st.just("mark"), st.integers(0, 3), st.sampled_from([0.3, 1.0]), st.booleans()),
        st.tuples(st.just("read")),
        st.tuples(st.just("save")),
        st.tuples(st.just("restart")),  # a clean stop: saved, then started again
        st.tuples(st.just("kill")),  # kill -9: started again from the last save
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS, seed=st.integers(0, 1000), block=st.booleans())
def test_random_appends_marks_rotations_and_restarts(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]], seed: int, block: bool
) -> None:
    """In block mode a status event is finished one read later (delivered meanwhile): a
    kill before then must bring it again."""
    wal = tmp_path_factory.mktemp("wal")
    w = NexusWriter(wal, max_segment_bytes=3 * 1024, seed=seed)

    def start(saved: Saved | None) -> Reader:
        r = Reader(wal, *(saved or ("beginning", None)))
        r.hold = block
        return r

    def deliver(r: Reader) -> None:
        for change in r.held:
            r.watch.finished(change)
        r.held.clear()

    reader = start(None)
    changes: list[tuple[str, str]] = []
    saved: Saved | None = None
    killed = False
    for op in ops:
        if op[0] == "append":
            w.append(op[1])
        elif op[0] == "mark":
            with_data = [s for s in w.segments if w.line_count(s)]
            if with_data:
                segment = with_data[-1 - op[1] % len(with_data)]
                w.rewrite(segment, fraction=op[2], failed=0.5 if op[3] else 0.0)
        elif op[0] == "read":
            deliver(reader)
            reader.drain()
        elif op[0] == "save":
            reader.drain()
            saved = reader.save()
        elif op[0] in ("restart", "kill"):
            if op[0] == "restart":
                reader.drain()
                deliver(reader)
                saved = reader.save()
            else:
                killed = True
            changes += reader.changes
            reader.close()
            reader = start(saved)
    reader.drain()
    changes += reader.changes
    reader.close()

    statuses = writer_statuses(w)
    assert statuses == final_statuses(wal, None)  # the writer's record, checked
    got: dict[str, str] = {}
    for kind, pid in changes:
        assert got.setdefault(pid, kind) == kind
    assert got == expected_changes(statuses), "a status event is missing or spurious"
    if not killed:
        assert len(changes) == len(got), "a status event came twice without a crash"
