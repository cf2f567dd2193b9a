"""A read that blocks stalls only reading: queued events are still delivered and the admin
endpoints still answer (the WAL is read in a thread of its own, eventsinkd/wal/thread.py)."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from daemon_harness import Daemon, settle, until, until_status

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.wal.thread import ReaderThread

# openat(2)'s number, as /proc/<pid>/task/<tid>/syscall shows it
OPENAT = {"x86_64": 257, "aarch64": 56}[platform.machine()]


def reader_blocked_in_open(pid: int) -> bool:
    """True while the daemon's WAL reader thread sits in openat(2) (here: on a FIFO)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if not (task / "comm").read_text().startswith("wal-reader"):
                continue
            return (task / "syscall").read_text().split()[0] == str(OPENAT)
        except OSError:
            continue
    return False


async def stall_reader(d: Daemon, w: NexusWriter, tmp_path: Path) -> tuple[Path, Path]:
    """Stall the daemon's reader: a FIFO renamed over the segment it reads. Following the
    "rewrite", it opens the FIFO, and open(2) blocks until a writer comes (a hung NFS read
    stands in). Returns the FIFO (another name for it) and a copy of the segment."""
    segment = d.wal / w.active_segment
    saved = tmp_path / "segment.copy"
    shutil.copy(segment, saved)
    stall = tmp_path / "stall.fifo"
    os.mkfifo(stall)
    os.link(stall, d.wal / "stall.tmp")
    os.rename(d.wal / "stall.tmp", segment)
    assert d.proc is not None
    pid = d.proc.pid
    await until(lambda: reader_blocked_in_open(pid), timeout_s=30)
    return stall, saved


async def test_sigterm_stops_the_daemon_while_a_read_is_stuck(
    tmp_path: Path, new_daemon: Callable[..., Daemon], receiver: WebhookServer
) -> None:
    d = new_daemon([{"name": "s", "url": receiver.url}])
    w = NexusWriter(d.wal, precreate=False, seed=13)
    w.append(3)
    await d.start()
    await receiver.wait_for(3)
    await stall_reader(d, w, tmp_path)
    assert await d.stop(timeout_s=30) == 0  # the stuck read is left behind, not waited for


async def test_a_stalled_read_holds_up_neither_delivery_nor_the_admin_endpoints(
    tmp_path: Path, new_daemon: Callable[..., Daemon], receiver: WebhookServer
) -> None:
    gate = asyncio.Event()
    gate.set()

    async def gated(_n: int, _req: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(status=204)

    receiver.behaviour = gated
    d = new_daemon([{"name": "s", "url": receiver.url}])
    w = NexusWriter(d.wal, precreate=False, seed=12)
    w.append(10)
    await d.start()
    await receiver.wait_for(10)

    gate.clear()  # the next events stay in the sink, in flight or queued
    w.append(20)
    await until_status(d, lambda s: s["sinks"]["s"]["queue_depth"] == 20, what="20 held")

    stall, saved = await stall_reader(d, w, tmp_path)
    assert d.proc is not None

    gate.set()
    await receiver.wait_for(30)  # what was queued goes out while reading is stuck
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for path in ("/healthz", "/metrics", "/status"):
            async with http.get(f"{d.admin}{path}") as r:
                assert r.status == 200, path
    assert reader_blocked_in_open(d.proc.pid)  # still stuck: the above did not need it

    # Unstick it: the segment back in place, then a writer for the FIFO.
    os.rename(saved, d.wal / w.active_segment)
    fd = os.open(stall, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)
    w.append(5)
    await receiver.wait_for(35)
    await settle(d)
    assert sorted(set(receiver.ids)) == sorted(f"memory_written:{x.payload_id}" for x in w.written)
    assert await d.stop() == 0


async def test_the_reader_thread_runs_jobs_in_order_and_passes_errors_back() -> None:
    thread = ReaderThread("wal-reader test")
    done: list[int] = []
    results = await asyncio.gather(
        *(thread.run(lambda i=i: done.append(i) or i) for i in range(50))
    )
    assert results == list(range(50)) and done == list(range(50))

    def fail() -> None:
        raise OSError("disk gone")

    try:
        await thread.run(fail)
    except OSError as exc:
        assert str(exc) == "disk gone"
    else:
        raise AssertionError("the error did not come back")
    thread.stop()
    late: list[str] = []
    thread.submit(lambda: late.append("inline"))  # stopped: runs here and now
    assert late == ["inline"]
