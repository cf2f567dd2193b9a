"""The follower against a live, Nexus-like writer: every data entry once, in WAL order."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from conftest import collect
from daemon_harness import until

from eventsinkd.devtools.sim.nexus_writer import NexusWriter, run_workload
from eventsinkd.wal.batches import Record
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.scanner import WalScanner


def ids(records: list[Record]) -> list[str]:
    return [r.entry.payload_id for r in records if r.entry.is_data]


def fresh_line(wal_dir: Path, seed: int) -> bytes:
    """A valid line with a key no other writer in the test uses (written outside the WAL)."""
    scratch = wal_dir.parent / f"scratch-{seed}"
    w = NexusWriter(scratch, precreate=False, seed=seed)
    w.append(1)
    return w.path(w.active_segment).read_bytes()


def expected_ids(writer: NexusWriter) -> list[str]:
    return [w.payload_id for w in writer.expected_data()]


class Reader:
    """A follower running in the background of a test, collecting what it yields."""

    def __init__(self, wal_dir: Path, **kw: object) -> None:
        kw.setdefault("poll_interval_s", 0.05)
        self.follower = WalFollower(
            wal_dir,
            LineParser(kw.pop("mac_key", None)),  # type: ignore[arg-type]
            kw.pop("start", "beginning"),
            **kw,
        )  # type: ignore[arg-type]
        self.records: list[Record] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.follower:
            self.records.extend(batch.records)

    async def wait_for(self, n: int, timeout_s: float = 60) -> list[str]:
        """The ids read once there are ``n``; fails the test if they do not come in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(ids(self.records)) < n:
            assert loop.time() < deadline, f"{len(ids(self.records))} of {n} in {timeout_s}s"
            await asyncio.sleep(0.02)
        return ids(self.records)

    async def settle(self, quiet_s: float = 0.3) -> None:
        """Wait until nothing new arrived for ``quiet_s``: not a synchronisation but the
        check that nothing more comes (an extra, duplicate yield would show here)."""
        count = -1
        while count != len(self.records):
            count = len(self.records)
            await asyncio.sleep(quiet_s)

    async def close(self) -> None:
        self.follower.stop()
        await asyncio.wait_for(self.task, 10)


async def test_partial_last_line_is_consumed_only_when_complete(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, precreate=False)
    w.append(3)
    seg = w.path(w.active_segment)
    reader = Reader(wal_dir)
    assert len(await reader.wait_for(3)) == 3
    line = fresh_line(wal_dir, seed=7)
    with seg.open("ab") as fh:
        fh.write(line[:100])
    await reader.settle()
    assert len(ids(reader.records)) == 3
    with seg.open("ab") as fh:
        fh.write(line[100:])
    await reader.settle()
    await reader.close()
    assert len(ids(reader.records)) == 4
    assert reader.follower.scanner.stats.rejected == {}


async def test_torn_tail_counts_one_rejected_line(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, precreate=False)
    w.append(5)
    w.torn_tail()
    w.append(5)
    got = await collect(wal_dir)
    assert ids(got) == expected_ids(w)
    follower_stats = await _stats_after_reading(wal_dir)
    assert sum(follower_stats.values()) == 1


async def _stats_after_reading(wal_dir: Path) -> dict[str, int]:
    f = WalFollower(wal_dir, LineParser(), "beginning", follow=False)
    async for _ in f:
        pass
    return dict(f.scanner.stats.rejected)


async def test_hundreds_of_empty_segments_ahead_of_the_active_one(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, max_segment_bytes=64 * 1024)
    reader = Reader(wal_dir)
    for _ in range(20):
        w.append(20)
        w.create_empty_segments(25)  # newer names, but appends go on in the older segment
    w.append(20)
    got = await reader.wait_for(len(expected_ids(w)))
    await reader.settle()
    await reader.close()
    assert got == expected_ids(w)
    assert sum(1 for s in w.segments if w.line_count(s) == 0) >= 500


async def test_rewrite_of_the_segment_being_read(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, precreate=False, max_segment_bytes=1 << 30)
    w.append(2000)
    follower = WalFollower(
        wal_dir, LineParser(), "beginning", follow=True, batch_lines=100, poll_interval_s=0.05
    )
    got: list[Record] = []
    async for batch in follower:
        got.extend(batch.records)
        if len(got) == 700:
            # Mid-segment: the file is replaced by a bigger one with the same lines.
            w.rewrite(fraction=1.0)
            w.append(100)
        if len(got) >= 2100:
            follower.stop()
    assert ids(got) == expected_ids(w)
    assert follower.scanner.stats.rewrites == 1


async def test_truncated_segment_is_logged_and_reading_goes_on(
    wal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = NexusWriter(wal_dir, precreate=False)
    w.append(10)
    reader = Reader(wal_dir)
    await reader.wait_for(10)
    seg = w.path(w.active_segment)
    lines = seg.read_bytes().splitlines(keepends=True)
    with seg.open("r+b") as fh:  # an operator truncates in place to 4 lines
        fh.truncate(sum(len(x) for x in lines[:4]))
    await reader.settle()
    with seg.open("ab") as fh:  # ... and more lines arrive: they are read
        fh.write(b"".join(fresh_line(wal_dir, seed) for seed in (11, 12, 13)))
    await reader.wait_for(13)
    await reader.settle()
    await reader.close()
    assert len(ids(reader.records)) == 13
    assert "truncated" in caplog.text


def test_deleted_segments_and_tmp_files(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, precreate=False, max_segment_bytes=32 * 1024)
    for _ in range(20):
        w.append(10)
    segs = [s for s in w.segments if w.line_count(s)]
    assert len(segs) >= 4
    (wal_dir / "wal-1.tmp").write_bytes(b"garbage that is not a segment\n")
    (wal_dir / f"{segs[0][:-6]}.tmp").write_bytes(b"a rewrite in progress\n")
    scanner = WalScanner(wal_dir, LineParser(), "beginning", batch_lines=10)
    got: list[Record] = []
    while len(got) < 5:
        got.extend(_step(scanner))
    # Delete the segment being read (the rest is read from the open file) and the next one.
    os.unlink(w.path(segs[0]))
    os.unlink(w.path(segs[1]))
    w.append(20)
    while (batch := scanner.step()) is not None:
        got.extend(batch.records)
    scanner.close()
    assert ids(got) == [x.payload_id for x in w.expected_data() if x.segment != segs[1]]
    assert scanner.stats.rejected == {}
    assert scanner.stats.vanished == 1


def _step(scanner: WalScanner) -> list[Record]:
    batch = scanner.step()
    assert batch is not None
    return batch.records


async def test_directory_missing_then_created_then_replaced(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    reader = Reader(wal_dir)
    await until(lambda: "does not exist" in (reader.follower.scanner.error or ""))
    assert not reader.follower.ready
    w = NexusWriter(wal_dir, precreate=False)
    w.append(10)
    assert len(await reader.wait_for(10)) == 10
    assert reader.follower.ready
    shutil.rmtree(wal_dir)
    await until(lambda: not reader.follower.ready)
    w2 = NexusWriter(wal_dir, precreate=False, seed=2)
    w2.append(10)
    got = await reader.wait_for(20)
    await reader.settle()
    await reader.close()
    assert got == expected_ids(w) + expected_ids(w2)


async def test_rotation_crash_duplicates_come_out_once(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, precreate=False)
    w.append(30)
    w.crash_rotation_duplicate(3)
    w.append(30)
    got = await collect(wal_dir)
    assert ids(got) == expected_ids(w)
    assert len(expected_ids(w)) == 60


async def test_too_long_line_is_skipped_and_reading_continues(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, precreate=False)
    w.append(2)
    seg = w.path(w.active_segment)
    valid = fresh_line(wal_dir, seed=8)
    with seg.open("ab") as fh:
        fh.write(b"BFBFBFBFBFBFBFBF\t" + b"x" * (11 * 1024 * 1024) + b"\n")
        fh.write(valid)
    f = WalFollower(wal_dir, LineParser(), "beginning", follow=False)
    got = [r async for b in f for r in b.records]
    assert len(got) == 3
    assert f.scanner.stats.rejected == {"too_long": 1}


async def test_start_at_end_skips_what_is_there(wal_dir: Path) -> None:
    w = NexusWriter(wal_dir, max_segment_bytes=32 * 1024)
    for _ in range(10):
        w.append(10)
    before = len(w.expected_data())
    reader = Reader(wal_dir, start="end")
    await until(lambda: reader.follower.ready)  # its start position is settled at the end
    w.append(50)
    got = await reader.wait_for(50)
    await reader.settle()
    await reader.close()
    assert got == expected_ids(w)[before:]


@pytest.mark.parametrize(
    ("total", "force_polling", "kw"),
    [
        (50_000, False, {}),
        (10_000, True, {"layout": "mixed", "checkpoint_every": 100}),
        (10_000, False, {"compress": True, "mac_key": b"k3y", "shuffle_seq": True}),
    ],
    ids=["watchfiles-50k", "polling-mixed", "zstd-mac"],
)
async def test_live_writer_every_entry_once_in_order(
    wal_dir: Path, total: int, force_polling: bool, kw: dict[str, object]
) -> None:
    reader = Reader(wal_dir, force_polling=force_polling, mac_key=kw.get("mac_key"))
    writer = await asyncio.to_thread(
        run_workload,
        wal_dir,
        total,
        batch=50,
        rewrite_every=300,
        max_segment_bytes=2 * 1024 * 1024 if total > 20_000 else 512 * 1024,
        **kw,
    )
    expected = expected_ids(writer)
    got = await reader.wait_for(len(expected), timeout_s=180)
    await reader.settle()
    await reader.close()
    assert len(got) == len(expected)
    assert got == expected
    assert len([s for s in writer.segments if writer.line_count(s)]) >= 10
    stats = reader.follower.scanner.stats
    assert stats.rejected == {}
    assert stats.rewrites > 0


def test_start_at_end_is_not_a_truncation(wal_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = NexusWriter(wal_dir, precreate=False)
    w.append(10)
    scanner = WalScanner(wal_dir, LineParser(), "end")
    assert scanner.step() is None
    scanner.close()
    assert scanner.position.segment == w.active_segment and scanner.position.line == 10
    assert scanner.stats.truncations == 0
    assert "fewer than" not in caplog.text


async def test_a_reader_that_never_stops_keeps_its_backlog_figure_current(wal_dir: Path) -> None:
    """/metrics and /status never wait for the reader: while it steps they take the figure
    it last left. A reader that is always stepping (a catch-up) must leave one, or the lag
    shows 0 bytes behind a backlog of gigabytes."""
    NexusWriter(wal_dir, precreate=False).append(800)
    follower = WalFollower(wal_dir, LineParser(), "beginning", batch_lines=16)
    try:
        assert follower._step() is not None  # the reader thread's step
        with follower._stepping:  # ... and it is stepping again whenever anyone looks
            behind = follower.backlog_bytes()
        assert behind == follower.scanner.backlog_bytes() > 0
    finally:
        follower._close()
