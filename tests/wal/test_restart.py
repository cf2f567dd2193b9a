"""Stop the reader anywhere, restart from the saved position: nothing repeated, nothing missed."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from eventsinkd.devtools.sim.nexus_writer import NexusWriter, Written, run_workload
from eventsinkd.state.positions import Checkpointer, PositionStore
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position


def index_after(expected: list[Written], pos: Position) -> int:
    """How many expected entries lie at or before ``pos``."""
    return sum(1 for w in expected if (w.segment, w.line + 1) <= pos.key())


async def read_some(
    wal_dir: Path, store: PositionStore, n_batches: int, *, ack_lag: int = 0
) -> list[str]:
    """Resume from the store, read ``n_batches``, ack all but the last ``ack_lag`` records."""
    saved = store.load()
    follower = WalFollower(
        wal_dir,
        LineParser(),
        saved or "beginning",
        follow=False,
        batch_lines=random.randint(1, 300),
        poll_interval_s=0.05,
    )
    checkpoints = Checkpointer(store)
    got: list[str] = []
    positions: list[Position] = []
    seen = 0
    async for batch in follower:
        data = [r for r in batch.records if r.entry.is_data]
        got.extend(r.entry.payload_id for r in data)
        positions.extend(r.position for r in data)
        seen += 1
        if seen >= n_batches:
            break
    if ack_lag:
        # Acknowledge only up to an earlier record: the rest must come again after restart.
        if len(positions) > ack_lag:
            checkpoints.ack(positions[-ack_lag - 1])
        got = got[: max(0, len(got) - ack_lag)]
    elif not ack_lag and seen:
        checkpoints.ack(follower.position)
    checkpoints.flush()
    return got


@pytest.mark.parametrize("ack_lag", [0, 7])
async def test_random_stops_resume_exactly(tmp_path: Path, ack_lag: int) -> None:
    wal = tmp_path / "wal"
    random.seed(ack_lag)
    w = NexusWriter(wal, max_segment_bytes=64 * 1024, checkpoint_every=50)
    for i in range(60):
        w.append(50)
        if i % 7 == 0:
            w.rewrite_recent()
        if i == 30:
            w.crash_rotation_duplicate(3)
    store = PositionStore(tmp_path / "state", wal)
    expected = [x.payload_id for x in w.expected_data()]
    got: list[str] = []
    for _ in range(200):
        got += await read_some(wal, store, random.randint(1, 8), ack_lag=ack_lag)
        if len(got) >= len(expected):
            break
    # The last batches: read to the end.
    got += await read_some(wal, store, 10**9)
    assert got == expected


async def test_random_stops_while_nexus_writes(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    random.seed(1)
    store = PositionStore(tmp_path / "state", wal)
    done = threading.Event()

    def write() -> NexusWriter:
        try:
            return run_workload(
                wal,
                6000,
                batch=25,
                rewrite_every=200,
                rate_per_s=6000,
                max_segment_bytes=128 * 1024,
            )
        finally:
            done.set()

    writing = asyncio.create_task(asyncio.to_thread(write))
    got: list[str] = []
    while not done.is_set():
        # Without follow, each run ends where the writer has got to: stops land anywhere.
        got += await read_some(wal, store, random.randint(1, 5))
        await asyncio.sleep(random.uniform(0, 0.02))
    writer = await writing
    got += await read_some(wal, store, 10**9)
    assert got == [x.payload_id for x in writer.expected_data()]


def _tail(wal: Path, state: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventsinkd",
            "tail",
            str(wal),
            "--from",
            "beginning",
            "--state-dir",
            str(state),
            "--poll-interval",
            "0.05",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _complete_ids(out: bytes) -> list[str]:
    lines = out.split(b"\n")[:-1]  # a kill -9 can cut the last line short
    return [json.loads(line)["payload_id"] for line in lines]


def test_kill_9_and_restart_from_saved_position(tmp_path: Path) -> None:
    wal, state = tmp_path / "wal", tmp_path / "state"
    wal.mkdir()
    rng = random.Random(9)
    stop = threading.Event()
    result: list[NexusWriter] = []
    writer_thread = threading.Thread(
        target=lambda: result.append(
            run_workload(
                wal,
                20_000,
                batch=20,
                rewrite_every=400,
                rate_per_s=2500,
                stop=stop,
                max_segment_bytes=256 * 1024,
            )
        ),
    )
    writer_thread.start()
    store = PositionStore(state, wal)
    runs: list[tuple[Position | None, list[str]]] = []
    try:
        for _ in range(5):
            saved = store.load()
            proc = _tail(wal, state)
            time.sleep(rng.uniform(0.5, 1.5))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
            runs.append((saved, _complete_ids(out)))
    finally:
        writer_thread.join(timeout=60)
        stop.set()
    writer = result[0]
    # Final run, after the writer is done: graceful, to the end.
    saved = store.load()
    proc = _tail(wal, state, "--no-follow")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    runs.append((saved, _complete_ids(out)))

    expected_w = writer.expected_data()
    expected = [x.payload_id for x in expected_w]
    for saved_pos, printed in runs:
        start = index_after(expected_w, saved_pos) if saved_pos else 0
        # Each run starts exactly after the saved position and prints WAL order from there.
        assert printed == expected[start : start + len(printed)]
    # Together, the runs miss nothing.
    final_start = index_after(expected_w, runs[-1][0]) if runs[-1][0] else 0
    assert final_start + len(runs[-1][1]) == len(expected)
    assert sum(len(p) for _, p in runs) >= len(expected)


def test_sigterm_saves_the_position(tmp_path: Path) -> None:
    wal, state = tmp_path / "wal", tmp_path / "state"
    w = NexusWriter(wal, precreate=False)
    w.append(100)
    proc = _tail(wal, state)
    deadline = time.monotonic() + 30
    while not (state / "position.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert len(_complete_ids(out)) == 100
    saved = PositionStore(state, wal).load()
    assert saved == Position(w.active_segment, 100, w.expected_data()[-1].idempotency_key)
    w.append(5)
    proc = _tail(wal, state, "--no-follow")
    out, _ = proc.communicate(timeout=30)
    assert _complete_ids(out) == [x.payload_id for x in w.expected_data()[100:]]
