"""Fault suite, the WAL under abuse while the daemon runs: it keeps running, counts what it
rejected, and resumes delivery. Block mode, so every surviving entry must arrive."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, accounting, metric_value, settle, until, until_status

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter, Written


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


async def started(tmp_path: Path, receiver: WebhookServer, **popen: object) -> Daemon:
    d = Daemon(tmp_path, [{"name": "s", "url": receiver.url}], overflow="block")
    await d.start(**popen)
    return d


def ids(entries: list[Written]) -> set[str]:
    return {f"memory_written:{x.payload_id}" for x in entries}


async def delivered_exactly(d: Daemon, receiver: WebhookServer, want: set[str]) -> None:
    await until(lambda: set(receiver.ids) >= want, timeout_s=60)
    await settle(d)
    assert set(receiver.ids) == want
    assert len(receiver.ids) == len(want)  # nothing delivered twice
    delivered, failed, dropped = await accounting(d, "s")
    assert (delivered, failed, dropped) == (len(want), 0, 0)


async def rejected(d: Daemon, reason: str) -> float:
    return metric_value(
        await d.get("/metrics"), "eventsinkd_wal_lines_rejected_total", reason=reason
    )


def fresh_line(tmp_path: Path, seed: int) -> tuple[bytes, Written]:
    w = NexusWriter(tmp_path / f"scratch-{seed}", precreate=False, seed=seed)
    (rec,) = w.append(1)
    return w.path(w.active_segment).read_bytes(), rec


async def test_active_segment_replaced_by_garbage(tmp_path: Path, receiver: WebhookServer) -> None:
    d = await started(tmp_path, receiver)
    w = NexusWriter(d.wal, precreate=False)
    try:
        w.append(100)
        await until(lambda: len(receiver.ids) >= 100)
        d.signal(signal.SIGSTOP)
        lost = w.append(50)
        seg = w.path(w.active_segment)
        garbage = b"".join(os.urandom(200).replace(b"\n", b"") + b"\n" for _ in range(150))
        tmp = d.wal / "wal-garbage.tmp"
        tmp.write_bytes(garbage)
        os.rename(tmp, seg)  # 150 lines of garbage where 150 lines were
        d.signal(signal.SIGCONT)
        after = w.append(30)
        want = ids(w.expected_data()) - ids(lost)
        await delivered_exactly(d, receiver, want)
        assert ids(after) <= set(receiver.ids)
        assert await rejected(d, "partial") + await rejected(d, "garbage") >= 50
    finally:
        d.signal(signal.SIGCONT)
        assert await d.stop() == 0


async def test_flipped_byte_and_half_written_line(tmp_path: Path, receiver: WebhookServer) -> None:
    d = await started(tmp_path, receiver)
    w = NexusWriter(d.wal, precreate=False, max_segment_bytes=1 << 30)
    try:
        w.append(10)
        await until(lambda: len(receiver.ids) >= 10)
        d.signal(signal.SIGSTOP)
        batch = w.append(20)
        seg = w.path(w.active_segment)
        lines = seg.read_bytes().splitlines(keepends=True)
        offset = sum(len(x) for x in lines[:15]) + len(lines[15]) // 2
        with seg.open("r+b") as fh:  # flip one bit in the middle of line 16
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x01]))
        d.signal(signal.SIGCONT)
        want = ids(w.expected_data()) - ids([batch[5]])
        await delivered_exactly(d, receiver, want)
        assert await rejected(d, "crc") == 1

        # A line written in two halves is delivered once, when complete.
        line, rec = fresh_line(tmp_path, seed=77)
        with seg.open("ab") as fh:
            fh.write(line[:200])
        await asyncio.sleep(1.0)
        assert f"memory_written:{rec.payload_id}" not in receiver.ids
        with seg.open("ab") as fh:
            fh.write(line[200:])
        await delivered_exactly(d, receiver, want | ids([rec]))
    finally:
        d.signal(signal.SIGCONT)
        assert await d.stop() == 0


async def test_segments_deleted_under_the_reader(tmp_path: Path, receiver: WebhookServer) -> None:
    d = await started(tmp_path, receiver)
    w = NexusWriter(d.wal, precreate=False, max_segment_bytes=16 * 1024)
    try:
        w.append(10)
        await until(lambda: len(receiver.ids) >= 10)
        d.signal(signal.SIGSTOP)
        for _ in range(20):
            w.append(10)
        with_data = [s for s in w.segments if w.line_count(s)]
        victims = with_data[2:4]
        for name in victims:
            os.unlink(w.path(name))
        d.signal(signal.SIGCONT)
        w.append(10)
        want = {
            f"memory_written:{x.payload_id}" for x in w.expected_data() if x.segment not in victims
        }
        await delivered_exactly(d, receiver, want)
    finally:
        d.signal(signal.SIGCONT)
        assert await d.stop() == 0


async def test_a_thousand_empty_segments_at_once(tmp_path: Path, receiver: WebhookServer) -> None:
    d = await started(tmp_path, receiver)
    w = NexusWriter(d.wal, max_segment_bytes=32 * 1024)
    try:
        w.append(20)
        w.create_empty_segments(1000)
        for _ in range(10):
            w.append(20)
        await delivered_exactly(d, receiver, ids(w.expected_data()))
        assert metric_value(await d.get("/metrics"), "eventsinkd_wal_segments") >= 1000
    finally:
        assert await d.stop() == 0


async def test_wal_directory_removed_and_recreated(tmp_path: Path, receiver: WebhookServer) -> None:
    d = await started(tmp_path, receiver)
    w = NexusWriter(d.wal, precreate=False)
    try:
        w.append(30)
        await until(lambda: len(receiver.ids) >= 30)
        shutil.rmtree(d.wal)
        await until(lambda: "does not exist" in d.log.read_text())
        readyz = await d.get("/readyz")
        assert '"ready": false' in readyz and "does not exist" in readyz
        w2 = NexusWriter(d.wal, precreate=False, seed=2)
        w2.append(30)
        await d.wait_ready()
        await delivered_exactly(d, receiver, ids(w.expected_data()) | ids(w2.expected_data()))
    finally:
        assert await d.stop() == 0


def _drop_dac_override() -> None:
    """In the child: lose root's power to ignore file permissions (CAP_DAC_*)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


async def test_permissions_taken_away_and_given_back(
    tmp_path: Path, receiver: WebhookServer
) -> None:
    popen: dict[str, object] = {}
    if os.geteuid() == 0:
        # Root reads anything; without the DAC capabilities it obeys modes like the Nexus user.
        probe = await asyncio.create_subprocess_exec(
            "true", preexec_fn=_drop_dac_override, stderr=asyncio.subprocess.DEVNULL
        )
        if await probe.wait() != 0:
            why = "cannot drop CAP_DAC_OVERRIDE here (prctl PR_CAPBSET_DROP refused)"
            if os.environ.get("CI"):
                pytest.fail(f"{why}: CI runs as root with the capability to drop")
            pytest.skip(why)
        popen["preexec_fn"] = _drop_dac_override
    d = await started(tmp_path, receiver, **popen)
    w = NexusWriter(d.wal, precreate=False)
    try:
        w.append(20)
        await until(lambda: len(receiver.ids) >= 20)
        d.wal.chmod(0o000)
        await until(lambda: "not readable" in d.log.read_text())
        status = json.loads(await d.get("/status"))
        assert not status["ready"] and "not readable" in " ".join(status["problems"])
        w.append(20)  # Nexus (root here) keeps writing
        await asyncio.sleep(0.5)
        assert len(receiver.ids) == 20
        d.wal.chmod(0o700)
        await d.wait_ready()
        await delivered_exactly(d, receiver, ids(w.expected_data()))
    finally:
        d.wal.chmod(0o700)
        assert await d.stop() == 0


@pytest.mark.parametrize("file", ["position.json", "cursors/s.json"])  # before and after upgrade
@pytest.mark.parametrize("overflow", ["block", "drop"])
async def test_corrupt_position_file_stops_block_mode_and_is_reported_in_drop_mode(
    tmp_path: Path, receiver: WebhookServer, file: str, overflow: str
) -> None:
    """No usable copy of a cursor (issue 21): block mode does not start (exit 3) and says
    what to do; drop mode starts at ``start_at``, and says so until the cursor is saved."""
    (tmp_path / "state" / "cursors").mkdir(parents=True)
    (tmp_path / "state" / file).write_text('{"version": 1, "segm')
    name = file.rpartition("/")[2]
    d = Daemon(tmp_path, [{"name": "s", "url": receiver.url}], overflow=overflow)
    if overflow == "block":
        await d.start(wait=False)
        assert d.proc is not None
        assert await asyncio.wait_for(d.proc.wait(), 60) == 3
        log = d.log.read_text()
        assert f"{name} is corrupt" in log and "eventsinkd rewind -c" in log, log
        return
    await d.start()
    w = NexusWriter(d.wal, precreate=False)
    try:
        status = json.loads(await d.get("/status"))
        assert any(f"{name} is corrupt" in p for p in status["problems"]), status
        assert f"{name} is corrupt" in d.log.read_text()
        w.append(20)
        await delivered_exactly(d, receiver, ids(w.expected_data()))
        await until_status(d, lambda st: st["problems"] == [], what="saved over")
    finally:
        assert await d.stop() == 0


async def test_unwritable_position_file_is_reported_and_recovers(
    tmp_path: Path, receiver: WebhookServer
) -> None:
    d = await started(tmp_path, receiver)
    w = NexusWriter(d.wal, precreate=False)
    state = d.cursor_path("s")
    try:
        w.append(10)
        await until(lambda: state.is_file())
        state.unlink()
        state.mkdir()  # rename over a directory fails, even for root
        w.append(10)
        await until(lambda: "cannot save position" in d.log.read_text())
        status = json.loads(await d.get("/status"))
        assert any("cannot save position" in p for p in status["problems"])
        await delivered_exactly(d, receiver, ids(w.expected_data()))
        state.rmdir()
        await until(lambda: state.is_file())
        status = json.loads(await d.get("/status"))
        assert status["problems"] == []
    finally:
        assert await d.stop() == 0
