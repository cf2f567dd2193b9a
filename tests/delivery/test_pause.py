"""A failing receiver pauses its sink: one probe at a time, nothing used up, resume on success."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from daemon_harness import until
from engine_harness import batch, events_cfg, started

from eventsinkd.devtools.peers.webhook import WebhookServer


class Outage:
    """A receiver's behaviour: 503 while ``down``, 200 otherwise.

    ``watching`` (the sink is paused) marks requests that arrive while it holds;
    ``overlap`` records how many of those were in flight at once.
    """

    def __init__(self, retry_after: str | None = None) -> None:
        self.down = True
        self.retry_after = retry_after
        self.watching: Callable[[], bool] = lambda: False
        self.watched_in_flight = 0
        self.overlap: list[int] = []
        self.delivered: list[str] = []  # webhook-ids answered 200, in order

    async def __call__(self, _n: int, r: web.Request) -> web.StreamResponse:
        watched = self.watching()
        if watched:
            self.watched_in_flight += 1
            self.overlap.append(self.watched_in_flight)
        try:
            await asyncio.sleep(0.02)  # long enough for concurrent requests to overlap
            if self.down:
                headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                return web.Response(status=503, headers=headers)
            self.delivered.append(r.headers["webhook-id"])
            return web.Response(status=200)
        finally:
            if watched:
                self.watched_in_flight -= 1


@pytest.fixture
async def server() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


async def test_an_outage_pauses_the_sink_then_one_probe_at_a_time_and_nothing_is_used_up(
    server: WebhookServer,
) -> None:
    outage = Outage()
    server.behaviour = outage
    cfg = events_cfg(
        {"name": "s", "url": server.url, "concurrency": 8, "max_retries": 1},
        retry_backoff_seconds=[0.05],
        pause_after_failures=5,
    )
    async with started(cfg) as h:
        sink = h.engine.sinks["s"]
        outage.watching = lambda: sink.paused
        await h.handle(batch(0, 50))
        await until(lambda: sink.paused)
        # Many probes: far more attempts than max_retries allows any one event. Requests
        # sent just before the pause can still arrive after it (at most one per worker and
        # per parked retry); after those, one at a time.
        await until(lambda: len(outage.overlap) >= 40)
        assert max(outage.overlap[-20:]) == 1, outage.overlap
        assert sink.stats.failed == 0 and sink.inflight == 50
        outage.down = False
        await asyncio.wait_for(h.engine.wait_idle(), 30)
        assert not sink.paused
        assert sorted(outage.delivered) == sorted(set(outage.delivered))
        assert len(outage.delivered) == 50
        assert h.accounting("s") == (50, 50, 0, 0)


async def test_a_paused_sink_honours_retry_after(server: WebhookServer) -> None:
    outage = Outage(retry_after="1")
    server.behaviour = outage
    cfg = events_cfg(
        {"name": "s", "url": server.url, "concurrency": 1, "max_retries": 100},
        retry_backoff_seconds=[0.01],
        pause_after_failures=2,
    )
    async with started(cfg, stop_timeout_s=0.1) as h:
        sink = h.engine.sinks["s"]
        await h.handle(batch(0, 3))
        await until(lambda: sink.paused)
        first = len(server.requests)
        await server.wait_for(first + 3, timeout_s=30)
        probes = server.requests[first:]
        gaps = [b.at - a.at for a, b in itertools.pairwise(probes)]
        # Each probe waits what the receiver asked (1 s, +0..10%), not the 0.01 s backoff.
        assert min(gaps) >= 0.95, gaps


async def test_concurrency_1_keeps_wal_order_across_retries_and_a_pause(
    server: WebhookServer,
) -> None:
    outage = Outage()
    outage.down = False
    attempts = 0

    async def flaky(n: int, r: web.Request) -> web.StreamResponse:
        nonlocal attempts
        attempts += 1
        outage.down = 3 <= attempts <= 12  # one retry for event 2, then an outage that pauses
        return await outage(n, r)

    server.behaviour = flaky
    cfg = events_cfg(
        {"name": "s", "url": server.url, "concurrency": 1, "max_retries": 2},
        retry_backoff_seconds=[0.01],
        pause_after_failures=4,
    )
    async with started(cfg) as h:
        sink = h.engine.sinks["s"]
        await h.handle(batch(0, 20))
        await until(lambda: sink.paused)
        await asyncio.wait_for(h.engine.wait_idle(), 30)
    assert outage.delivered == [f"memory_written:p{i:06d}" for i in range(20)]
    assert h.accounting("s") == (20, 20, 0, 0)
