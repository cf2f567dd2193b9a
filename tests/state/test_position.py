"""The saved position: atomic file, clear errors, and resuming when the WAL moved on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import collect
from daemon_harness import run_cli

from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.state.positions import Checkpointer, PositionFileError, PositionStore
from eventsinkd.wal.position import Position


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state", tmp_path / "wal")
    pos = Position("wal-1.jsonl", 42, "idem-1")
    assert store.save(pos)
    assert store.load() == pos
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["position.json"]
    doc = json.loads((tmp_path / "state" / "position.json").read_text())
    assert doc["segment"] == "wal-1.jsonl" and doc["line"] == 42 and doc["version"] == 1


def test_no_file_means_no_position(tmp_path: Path) -> None:
    assert PositionStore(tmp_path / "state", tmp_path / "wal").load() is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"version":1,"line":3}',
        b'{"version":9,"segment":"a","line":1}',
        b'{"version":1,"segment":"a","line":-1}',
    ],
)
def test_corrupt_file_is_an_error_with_the_path(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "position.json").write_bytes(content)
    with pytest.raises(PositionFileError, match=r"position\.json"):
        PositionStore(tmp_path / "state", tmp_path / "wal").load()


def test_unwritable_state_dir_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    store = PositionStore(tmp_path / "file" / "state", tmp_path / "wal")
    assert not store.save(Position("wal-1.jsonl", 1))
    assert store.last_error is not None and "cannot save position" in store.last_error
    assert "cannot save position" in caplog.text


def test_state_dir_inside_wal_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never writes into the WAL directory"):
        PositionStore(tmp_path / "wal" / "state", tmp_path / "wal")


def test_checkpointer_only_moves_forward_and_saves_changes(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state", tmp_path / "wal")
    cp = Checkpointer(store)
    cp.ack(Position("wal-2.jsonl", 5))
    cp.ack(Position("wal-1.jsonl", 900))
    assert cp.acked == Position("wal-2.jsonl", 5)
    assert cp.flush()
    mtime = os.stat(store.path).st_mtime_ns
    assert cp.flush()  # nothing new: no write
    assert os.stat(store.path).st_mtime_ns == mtime


async def test_vanished_segment_resumes_at_the_next_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = tmp_path / "wal"
    w = NexusWriter(wal, precreate=False, max_segment_bytes=16 * 1024)
    for _ in range(10):
        w.append(10)
    segs = [s for s in w.segments if w.line_count(s)]
    os.unlink(w.path(segs[0]))
    got = await collect(wal, start=Position(segs[0], 3))
    assert [r.entry.payload_id for r in got] == [
        x.payload_id for x in w.expected_data() if x.segment != segs[0]
    ]
    assert f"saved segment {segs[0]} no longer exists" in caplog.text


async def test_saved_key_relocates_when_lines_moved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = tmp_path / "wal"
    w = NexusWriter(wal, precreate=False)
    w.append(20)
    seg = w.path(w.active_segment)
    expected = w.expected_data()
    saved = Position(w.active_segment, 10, expected[9].idempotency_key)
    # Someone removed the first 4 lines (not something Nexus does; the key proves where we were).
    lines = seg.read_bytes().splitlines(keepends=True)
    tmp = seg.with_suffix(".tmp")
    tmp.write_bytes(b"".join(lines[4:]))
    os.rename(tmp, seg)
    got = await collect(wal, start=saved)
    assert [r.entry.payload_id for r in got] == [x.payload_id for x in expected[10:]]
    assert "saved entry found at line 6, not 10" in caplog.text


async def test_saved_key_nowhere_in_the_segment_resumes_at_the_saved_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = tmp_path / "wal"
    w = NexusWriter(wal, precreate=False)
    w.append(20)
    expected = w.expected_data()
    # The entry the cursor last finished is not in the segment at all any more (a segment
    # replaced by another one of the same name): the line count is all there is to go on.
    saved = Position(w.active_segment, 10, "idem-gone-for-good")
    got = await collect(wal, start=saved)
    assert [r.entry.payload_id for r in got] == [x.payload_id for x in expected[10:]]
    assert (
        f"segment {w.active_segment} no longer holds entry idem-gone-for-good at line 10; "
        "resuming at line 10" in caplog.text
    )


def test_tail_with_corrupt_state_file_starts_over_and_says_so(tmp_path: Path) -> None:
    wal, state = tmp_path / "wal", tmp_path / "state"
    w = NexusWriter(wal, precreate=False)
    w.append(3)
    state.mkdir()
    (state / "position.json").write_text("garbage")
    res = run_cli("tail", wal, "--from", "beginning", "--no-follow", "--state-dir", state)
    assert res.returncode == 0
    assert "position.json is corrupt" in res.stderr
    assert len(res.stdout.splitlines()) == 3
    assert PositionStore(state, wal).load() == Position(
        w.active_segment, 3, w.expected_data()[-1].idempotency_key
    )


def test_each_save_keeps_the_file_it_replaces_as_the_previous_copy(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state", tmp_path / "wal", "cursors/s.json")
    first, second = Position("wal-1.jsonl", 4, "k4"), Position("wal-1.jsonl", 9, "k9")
    assert store.save(first)
    assert not store.previous.exists()  # nothing was replaced
    assert store.save(second)
    assert PositionStore(tmp_path / "state", tmp_path / "wal", "cursors/s.json").load() == second
    assert json.loads(store.previous.read_bytes())["line"] == 4


@pytest.mark.parametrize("content", [b"", b"{trunc", b'{"version":2,"segment":"a","line":1}'])
def test_a_damaged_file_falls_back_to_the_previous_copy_which_a_save_keeps(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = PositionStore(tmp_path / "state", tmp_path / "wal", "cursors/s.json")
    assert store.save(Position("wal-1.jsonl", 4, "k4"))
    assert store.save(Position("wal-1.jsonl", 9, "k9"))
    store.path.write_bytes(content)
    again = PositionStore(tmp_path / "state", tmp_path / "wal", "cursors/s.json")
    assert again.load() == Position("wal-1.jsonl", 4, "k4")  # older: duplicates, never loss
    assert again.damage is not None and str(again.path) in again.damage
    assert "resuming from the previous copy" in caplog.text
    # The damaged file is not kept as the previous copy: the good one stays.
    assert again.save(Position("wal-1.jsonl", 6, "k6"))
    assert again.damage is None
    assert json.loads(again.previous.read_bytes())["line"] == 4
    assert again.save(Position("wal-1.jsonl", 7, "k7"))
    assert json.loads(again.previous.read_bytes())["line"] == 6


def test_both_copies_damaged_is_an_error_naming_both(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state", tmp_path / "wal", "cursors/s.json")
    assert store.save(Position("wal-1.jsonl", 4))
    assert store.save(Position("wal-1.jsonl", 9))
    store.path.write_bytes(b"")
    store.previous.write_bytes(b"x")
    with pytest.raises(PositionFileError, match=r"s\.json is corrupt \(empty\).*s\.json\.prev"):
        PositionStore(tmp_path / "state", tmp_path / "wal", "cursors/s.json").load()
