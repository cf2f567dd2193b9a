"""The engine following a real WAL in-process: cursors, block mode, a rewind with events held."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from daemon_harness import until
from engine_harness import Harness, events_cfg

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import SharedReading


async def test_a_rewind_is_not_undone_by_events_held_from_before_it(tmp_path: Path) -> None:
    release_first = asyncio.Event()
    seen: dict[str, int] = {}

    async def behaviour(_n: int, r: web.Request) -> web.StreamResponse:
        wid = r.headers["webhook-id"]
        seen[wid] = seen.get(wid, 0) + 1
        # First deliveries wait for the test; re-sent ones (after the rewind) never finish.
        await (release_first.wait() if seen[wid] == 1 else asyncio.Event().wait())
        return web.Response(status=200)

    server = await WebhookServer(behaviour).start()
    w = NexusWriter(tmp_path / "wal", precreate=False)
    w.append(20)
    cfg = events_cfg(
        {"name": "s", "url": server.url, "concurrency": 40, "timeout_seconds": 60},
        overflow="block",
    )
    h = Harness(cfg, start="beginning")
    cursor = h.engine.cursors["s"]
    reading = SharedReading(tmp_path / "wal", LineParser(), poll_interval_s=0.05)
    await h.engine.start()
    h.engine.follow(reading)
    try:
        await until(lambda: len(seen) == 20)
        await h.engine.rewind("s", Position("", 0))
        await until(lambda: all(n == 2 for n in seen.values()))  # every event sent again
        release_first.set()  # the 20 from before the rewind now finish
        await until(lambda: cursor.sink.stats.delivered == 20)
        # They finished, but the cursor stays where it was moved: the re-sent events have not
        # (it may only have stepped into the first segment, past no line).
        acked = cursor.checkpoints.acked
        assert acked is not None and acked.line == 0, acked
        assert all(pos.line == 0 for pos in h.acks["s"]), h.acks["s"]
    finally:
        await h.engine.stop(0.1)
        await server.stop()
