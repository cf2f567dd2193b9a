"""``rate_limit``: a token bucket that paces a sink's requests and never drops in block mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from engine_harness import Harness, batch, events_cfg
from hypothesis import given
from hypothesis import strategies as st
from test_batching import Scripted

from eventsinkd.delivery.pacing import TokenBucket
from eventsinkd.devtools.peers.webhook import WebhookServer


def test_the_burst_goes_at_once_then_each_event_waits_its_turn() -> None:
    bucket = TokenBucket(100.0, now=0.0)
    assert bucket.burst == 10.0 and bucket.batch_cap == 10
    assert [bucket.reserve(1, 0.0) for _ in range(10)] == [0.0] * 10
    waits = [bucket.reserve(1, 0.0) for _ in range(3)]  # in debt: queued behind each other
    assert waits == pytest.approx([0.01, 0.02, 0.03])
    assert bucket.delay(0.0) == pytest.approx(0.04)
    # After a quiet spell the bucket holds its burst again, no more.
    assert bucket.reserve(10, 10.0) == 0.0
    assert bucket.reserve(1, 10.0) == pytest.approx(0.01)


def test_a_slow_rate_has_a_burst_of_one_event() -> None:
    bucket = TokenBucket(2.0, now=0.0)
    assert (bucket.burst, bucket.batch_cap) == (1.0, 1)
    assert bucket.reserve(1, 0.0) == 0.0
    assert bucket.reserve(1, 0.0) == pytest.approx(0.5)


@given(
    rate=st.floats(0.5, 5000),
    requests=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 50)), max_size=200),
)
def test_no_more_than_the_burst_plus_the_rate_go_out_by_any_time(
    rate: float, requests: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    sends: list[tuple[float, int]] = []
    for gap, n in requests:
        now += gap
        sends.append((now + bucket.reserve(n, now), n))
    sends.sort()
    sent = 0
    for at, n in sends:
        sent += n
        assert sent <= bucket.burst + rate * at + 1e-6 * sent


@pytest.fixture
async def server() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


async def test_a_sink_delivers_no_faster_than_its_rate_limit_and_loses_nothing(
    server: WebhookServer,
) -> None:
    rate, n = 100.0, 150
    cfg = events_cfg(
        {"name": "s", "url": server.url, "rate_limit": rate}, overflow="block", max_inflight=40
    )
    start = time.monotonic()  # before the sink (and its bucket) exists
    h = Harness(cfg)
    await h.engine.start()
    try:
        for i in range(0, n, 25):
            await h.handle(batch(i, 25))
        await asyncio.wait_for(h.engine.wait_idle(), 60)
    finally:
        await h.engine.stop(1)
    burst = h.engine.sinks["s"].requests.bucket.burst  # type: ignore[union-attr]
    # Arrivals counted from before the bucket was made: by the k-th, at most the burst plus
    # what the rate allows since then (arriving later than sent only makes this looser).
    for k, req in enumerate(server.requests, 1):
        assert k <= burst + rate * (req.at - start), (k, req.at - start)
    assert h.accounting("s") == (n, n, 0, 0)
    assert sorted(server.ids) == sorted(f"memory_written:p{i:06d}" for i in range(n))


async def test_a_batching_sinks_batches_are_cut_to_the_burst() -> None:
    transport = Scripted()  # a transport answering from a script (test_batching)
    cfg = events_cfg(
        {"name": "r", "type": "otlp", "url": "http://127.0.0.1:9", "rate_limit": 50},
        overflow="block",
    )
    limited = Harness(cfg)
    limited.engine.sinks["r"].transport = transport
    assert limited.engine.sinks["r"].batch_size == 5  # 50/s: a tenth of a second's worth
    await limited.engine.start()
    try:
        await limited.handle(batch(0, 30))
        await asyncio.wait_for(limited.engine.wait_idle(), 30)
    finally:
        await limited.engine.stop(1)
    assert max(len(b) for b in transport.batches) <= 5
    assert sum(len(b) for b in transport.batches) == 30
