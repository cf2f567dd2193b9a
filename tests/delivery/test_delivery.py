"""The delivery engine against real aiohttp receivers on 127.0.0.1 (shared/spec/events.md)."""

from __future__ import annotations

import asyncio
import base64
import collections
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from aiohttp import web
from daemon_harness import until
from engine_harness import Harness, batch, entry, events_cfg, run
from standardwebhooks.webhooks import Webhook

from eventsinkd.delivery.job import Job
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.transports.contract import Outcome, parse_retry_after
from eventsinkd.wal.batches import Batch, Record
from eventsinkd.wal.position import Position

SECRET_A = "whsec_" + base64.b64encode(b"a" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(b"b" * 24).decode()


@pytest.fixture
async def server() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


async def test_body_and_headers_match_the_contract(server: WebhookServer) -> None:
    cfg = events_cfg(
        {
            "name": "a",
            "url": server.url,
            "secrets": [SECRET_A, SECRET_B],
            "headers": {"X-Team": "mem"},
        },
        {"name": "full", "url": server.url, "content": "full"},
    )
    await run(cfg, batch(0, 1))
    by_sig = {("webhook-signature" in r.headers): r for r in server.requests}
    signed, full = by_sig[True], by_sig[False]
    assert signed.body == (
        b'{"event_type":"memory_written","payload_id":"p000000","source":"claude-desktop",'
        b'"subject":"user:alice","destination":"sqlite","timestamp":"2026-04-10T12:34:56.1234567Z",'
        b'"actor_type":"user","actor_id":"alice"}'
    )
    assert full.body.endswith(b',"content":{"content":"memory \\u003c0\\u003e \\u0026 more"}}')
    h = signed.headers
    assert h["Content-Type"] == "application/json"
    assert h["User-Agent"].startswith("eventsinkd/")
    assert h["webhook-id"] == "memory_written:p000000"
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    assert h["X-Team"] == "mem"
    assert len(h["webhook-signature"].split(" ")) == 2
    # The reference verifier accepts it with either secret of the rotated pair.
    for secret in (SECRET_A, SECRET_B):
        assert Webhook(secret).verify(signed.body, h)["payload_id"] == "p000000"


async def test_500_then_200_is_retried_and_delivered(server: WebhookServer) -> None:
    async def flaky(n: int, _r: web.Request) -> web.StreamResponse:
        return web.Response(status=500 if n == 0 else 200)

    server.behaviour = flaky
    h = await run(events_cfg({"name": "s", "url": server.url}), batch(0, 1))
    assert server.ids == ["memory_written:p000000"] * 2
    assert h.accounting("s") == (1, 1, 0, 0)
    assert h.counter("eventsinkd_delivery_retries_total", "s") == 1
    assert (
        h.metrics.registry.get_sample_value(
            "eventsinkd_delivery_attempts_total", {"sink": "s", "outcome": "retry_status"}
        )
        == 1
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # an HTTP date, 10 s after "now"
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: at once
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),  # no such day
        ("Wed, 21 Foo 2015 07:28:00 GMT", None),  # no such month
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: HTTP dates are GMT
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delta-seconds are whole
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after(value, now) == seconds


async def test_a_malformed_retry_after_date_falls_back_to_the_backoff(
    server: WebhookServer,
) -> None:
    async def busy(n: int, _r: web.Request) -> web.StreamResponse:
        if n > 0:
            return web.Response(status=200)
        return web.Response(status=503, headers={"Retry-After": "Wed, 32 Oct 2099 25:61:00 GMT"})

    server.behaviour = busy
    cfg = events_cfg({"name": "s", "url": server.url}, retry_backoff_seconds=[0.05])
    h = await run(cfg, batch(0, 1))
    assert len(server.requests) == 2  # retried (not given up on, not stuck until 2099)
    assert h.accounting("s") == (1, 1, 0, 0)


@pytest.mark.parametrize("how", ["seconds", "http-date"])
async def test_retry_after_is_honoured(server: WebhookServer, how: str) -> None:
    async def busy(n: int, _r: web.Request) -> web.StreamResponse:
        if n > 0:
            return web.Response(status=200)
        if how == "seconds":
            return web.Response(status=429, headers={"Retry-After": "1"})
        when = email.utils.formatdate(time.time() + 2, usegmt=True)
        return web.Response(status=503, headers={"Retry-After": when})

    server.behaviour = busy
    h = await run(events_cfg({"name": "s", "url": server.url}), batch(0, 1))
    assert len(server.requests) == 2
    waited = server.requests[1].at - server.requests[0].at
    assert waited >= 0.95  # not the 0.05 s backoff: the header won (an HTTP date has 1 s steps)
    assert h.accounting("s") == (1, 1, 0, 0)


@pytest.mark.parametrize("status", [410, 400, 301])
async def test_permanent_statuses_fail_without_retry(server: WebhookServer, status: int) -> None:
    async def gone(_n: int, _r: web.Request) -> web.StreamResponse:
        return web.Response(status=status)

    server.behaviour = gone
    h = await run(events_cfg({"name": "s", "url": server.url}), batch(0, 3))
    assert len(server.requests) == 3
    assert h.accounting("s") == (3, 0, 3, 0)
    assert h.counter("bubblefish_events_failed_total", "s") == 3


async def test_timeouts_out_of_retries_with_no_success_pause_instead_of_failing(
    server: WebhookServer,
) -> None:
    async def hang(_n: int, _r: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(status=200)

    server.behaviour = hang
    cfg = events_cfg({"name": "s", "url": server.url, "timeout_seconds": 0.2, "max_retries": 2})
    h = Harness(cfg)
    await h.engine.start()
    await h.handle(batch(0, 1))
    sink = h.engine.sinks["s"]
    await server.wait_for(3)
    await until(lambda: sink.paused)
    # Nothing has got through since its first attempt: an outage, not this event's fault.
    assert sink.stats.failed == 0 and sink.inflight == 1
    assert h.counter("eventsinkd_sink_paused", "s") == 1
    await h.engine.stop(0.1)
    assert h.accounting("s") == (1, 0, 0, 1)


async def test_connection_refused_then_the_server_appears() -> None:
    probe = await WebhookServer().start()
    port = probe.port
    await probe.stop()  # nothing listens on this port now
    cfg = events_cfg(
        {"name": "s", "url": f"http://127.0.0.1:{port}/hook", "max_retries": 50},
        retry_backoff_seconds=[0.1],
    )
    h = Harness(cfg)
    await h.engine.start()
    await h.handle(batch(0, 5))
    refused = h.engine.sinks["s"].metrics.attempts[Outcome.CONNECTION]
    await until(lambda: refused.value >= 5)  # each event tried, and refused
    assert h.engine.sinks["s"].stats.delivered == 0
    server = await WebhookServer().start(port)
    try:
        await server.wait_for(5)
        await h.engine.stop(5)
    finally:
        await server.stop()
    assert sorted(set(server.ids)) == [f"memory_written:p{i:06d}" for i in range(5)]
    assert h.accounting("s") == (5, 5, 0, 0)
    assert (
        h.metrics.registry.get_sample_value(
            "eventsinkd_delivery_attempts_total", {"sink": "s", "outcome": "connection_error"}
        )
        >= 5
    )


async def test_a_stuck_sink_does_not_slow_a_fast_one(server: WebhookServer) -> None:
    slow = await WebhookServer().start()

    async def sleep30(_n: int, _r: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(status=200)

    slow.behaviour = sleep30
    cfg = events_cfg(
        {"name": "fast", "url": server.url},
        {"name": "slow", "url": slow.url, "timeout_seconds": 60},
        max_inflight=5000,
    )
    h = Harness(cfg)
    await h.engine.start()
    try:
        for i in range(10):
            await h.handle(batch(i * 100, 100))
        await server.wait_for(1000, timeout_s=60)
        # Every event reached the fast sink while the slow one has not finished a single one
        # (the last answers may still be on their way back to the fast sink).
        assert len(set(server.ids)) == 1000
        await until(lambda: h.engine.sinks["fast"].stats.delivered == 1000)
        assert h.engine.sinks["slow"].stats.delivered == 0
    finally:
        await h.engine.stop(0.1)
        await slow.stop()
    assert h.accounting("slow") == (1000, 0, 0, 1000)  # left at shutdown: counted as dropped


async def test_drop_accounting_is_exact(server: WebhookServer) -> None:
    release = asyncio.Event()

    async def blocked(_n: int, _r: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    server.behaviour = blocked
    cfg = events_cfg(
        {"name": "s", "url": server.url, "timeout_seconds": 30},
        {"name": "t", "url": server.url, "timeout_seconds": 30, "filter": {"source": ["claude-*"]}},
        max_inflight=100,
    )
    h = Harness(cfg)
    await h.engine.start()
    await h.handle(batch(0, 2000))
    assert h.engine.sinks["s"].stats.dropped == 1900
    release.set()
    await asyncio.wait_for(h.engine.wait_idle(), 30)
    await h.engine.stop(30)
    for name in ("s", "t"):
        offered, delivered, failed, dropped = h.accounting(name)
        assert offered == 2000
        assert delivered + failed + dropped == offered
        assert (delivered, dropped) == (100, 1900)
        assert h.counter("bubblefish_events_dropped_total", name) == 1900
        assert h.counter("bubblefish_events_delivered_total", name) == 100
    # Drop mode acknowledges the batch as soon as it is handed over.
    assert h.acks == {name: [Position("wal-1.jsonl", 2000)] for name in ("s", "t")}


async def test_drop_warnings_are_rate_limited(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()

    async def blocked(_n: int, _r: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    server.behaviour = blocked
    h = Harness(events_cfg({"name": "s", "url": server.url}, max_inflight=10))
    await h.engine.start()
    with caplog.at_level(logging.WARNING):
        await h.handle(batch(0, 5000))
    release.set()
    await h.engine.stop(10)
    assert h.engine.sinks["s"].stats.dropped == 4990
    assert caplog.text.count("queue full") == 1


async def test_block_mode_loses_nothing_and_acks_only_finished_events(
    server: WebhookServer,
) -> None:
    attempts: dict[str, int] = {}
    delivered: dict[str, set[str]] = {"s": set(), "t": set()}

    async def slowish(n: int, r: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.001 * (n % 7))
        key = r.headers["webhook-id"] + r.headers["X-Sink"]
        attempts[key] = attempts.get(key, 0) + 1
        # Some events fail once (retried and delivered later, out of order).
        if n % 13 == 0 and attempts[key] == 1:
            return web.Response(status=500)
        delivered[r.headers["X-Sink"]].add(r.headers["webhook-id"])
        return web.Response(status=200)

    server.behaviour = slowish
    cfg = events_cfg(
        {"name": "s", "url": server.url, "concurrency": 8, "headers": {"X-Sink": "s"}},
        {"name": "t", "url": server.url, "concurrency": 3, "headers": {"X-Sink": "t"}},
        max_inflight=100,
        overflow="block",
    )
    violations: list[str] = []

    def check(name: str, pos: Position) -> None:
        # Every event at or before a sink's acknowledged position has reached that sink.
        for i in range(pos.line):
            if f"memory_written:p{i:06d}" not in delivered[name]:
                violations.append(f"{name} acked {pos} before p{i:06d} was delivered")
                return

    h = Harness(cfg, check)
    await h.engine.start()
    for i in range(20):
        await h.handle(batch(i * 100, 100))
    await asyncio.wait_for(h.engine.wait_idle(), 60)
    await h.engine.stop(60)
    assert violations == []
    for name in ("s", "t"):
        assert h.accounting(name) == (2000, 2000, 0, 0)
    for name in ("s", "t"):
        assert h.acks[name][-1] == Position("wal-1.jsonl", 2000)
        assert h.acks[name] == sorted(h.acks[name])


async def test_block_mode_holds_the_position_at_an_unfinished_event(server: WebhookServer) -> None:
    async def first_hangs(n: int, r: web.Request) -> web.StreamResponse:
        if r.headers["webhook-id"].endswith("p000000"):
            await asyncio.sleep(30)
        return web.Response(status=200)

    server.behaviour = first_hangs
    cfg = events_cfg({"name": "s", "url": server.url, "timeout_seconds": 60}, overflow="block")
    h = Harness(cfg)
    await h.engine.start()
    await h.handle(batch(0, 50))
    await server.wait_for(50)
    # (the receiver logs a request before it answers: wait for the sink's count)
    await until(lambda: h.engine.sinks["s"].stats.delivered == 49)
    assert h.acks == {"s": []}  # 49 delivered, but the first is not finished
    left = await h.engine.stop(0.2)
    assert left == 1
    assert h.acks == {"s": []}  # the unfinished event is re-read after a restart
    assert h.accounting("s") == (50, 49, 0, 1)


async def test_stop_counts_queued_and_in_flight(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def slow(_n: int, _r: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.Response(status=200)

    server.behaviour = slow
    h = Harness(events_cfg({"name": "s", "url": server.url, "concurrency": 4}))
    await h.engine.start()
    await h.handle(batch(0, 40))
    await server.wait_for(4)  # 4 in flight, 36 queued
    with caplog.at_level(logging.WARNING):
        left = await h.engine.stop(0.7)
        assert await h.engine.stop(0.7) == left  # a second stop is safe and says the same
    offered, delivered, failed, dropped = h.accounting("s")
    assert offered == 40 and failed == 0
    assert delivered + dropped == 40
    assert 4 <= delivered < 40
    assert left == dropped
    assert f"sink s: {left} event(s) left undelivered at shutdown" in caplog.text


async def test_retrying_events_do_not_block_others(server: WebhookServer) -> None:
    async def fail_odd(_n: int, r: web.Request) -> web.StreamResponse:
        odd = int(r.headers["webhook-id"][-1]) % 2 == 1
        return web.Response(status=503 if odd else 200)

    server.behaviour = fail_odd
    cfg = events_cfg(
        {"name": "s", "url": server.url, "max_retries": 3}, retry_backoff_seconds=[3600]
    )
    h = Harness(cfg)
    await h.engine.start()
    await h.handle(batch(0, 200))
    # The 100 even events get through while the odd ones wait an hour for their retry.
    await until(lambda: h.engine.sinks["s"].stats.delivered >= 100)
    assert h.engine.sinks["s"].stats.delivered == 100
    await h.engine.stop(5)
    # At shutdown each parked event got one more try (no backoff), then was dropped.
    assert h.accounting("s") == (200, 100, 0, 100)
    tries = collections.Counter(server.ids)
    assert len(tries) == 200
    for webhook_id, n in tries.items():  # the odd ones: their first try, and the last one
        assert n == (2 if int(webhook_id[-1]) % 2 else 1), (webhook_id, n)


async def test_filters_and_event_types(server: WebhookServer) -> None:
    cfg = events_cfg(
        {"name": "alice", "url": server.url, "filter": {"subject": ["user:alice"]}},
        {"name": "bob", "url": server.url, "filter": {"subject": ["user:b*"]}},
        {"name": "none", "url": server.url, "filter": {"event_types": ["memory_persisted"]}},
    )
    recs = [
        Record(entry(1, subject="user:alice"), "wal-1.jsonl", 1),
        Record(entry(2, subject="user:bob"), "wal-1.jsonl", 2),
        Record(entry(3, entry_type="checkpoint"), "wal-1.jsonl", 3),
    ]
    h = await run(cfg, Batch(recs, Position("wal-1.jsonl", 3)))
    assert [h.accounting(n)[0] for n in ("alice", "bob", "none")] == [1, 1, 0]
    assert sorted(json.loads(r.body)["subject"] for r in server.requests) == [
        "user:alice",
        "user:bob",
    ]


async def test_reconfigure_hands_a_changed_sinks_events_over(server: WebhookServer) -> None:
    gate = asyncio.Event()

    async def gated(_n: int, _r: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(status=200)

    server.behaviour = gated
    other = await WebhookServer().start()
    cfg = events_cfg(
        {"name": "s", "url": server.url, "concurrency": 2},
        {"name": "gone", "url": other.url},
        overflow="block",
        max_inflight=500,
    )
    h = Harness(cfg)
    await h.engine.start()
    await h.handle(batch(0, 300))
    old = h.engine.sinks["s"]
    changes = await h.engine.reconfigure(
        events_cfg(
            {"name": "s", "url": server.url, "concurrency": 8}, overflow="block", max_inflight=500
        )
    )
    assert sorted(changes) == ["changed sink s", "removed sink gone"]
    assert h.engine.sinks["s"] is not old
    gate.set()
    await asyncio.wait_for(h.engine.wait_idle(), 30)
    await h.engine.stop(10)
    await other.stop()
    # Every event reached the receiver through the old or the new instance; none was dropped.
    assert {f"memory_written:p{i:06d}" for i in range(300)} <= set(server.ids)
    assert h.counter("bubblefish_events_dropped_total", "s") == 0
    assert h.counter("bubblefish_events_delivered_total", "s") >= 300
    assert h.acks["s"][-1] == Position("wal-1.jsonl", 300)


async def test_a_reload_that_changes_content_sends_events_read_before_it_as_rendered(
    server: WebhookServer,
) -> None:
    """Events a sink holds when a reload changes its ``content`` go to its successor with
    the body they were rendered with (the entry is not kept); those read after the reload
    get the new content."""
    gate = asyncio.Event()

    async def gated(_n: int, _r: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(status=200)

    server.behaviour = gated
    cfg = events_cfg({"name": "s", "url": server.url}, overflow="block", max_inflight=500)
    h = Harness(cfg)
    await h.engine.start()
    await h.handle(batch(0, 50))
    changes = await h.engine.reconfigure(
        events_cfg(
            {"name": "s", "url": server.url, "content": "full"}, overflow="block", max_inflight=500
        )
    )
    assert changes == ["changed sink s"]
    await h.handle(batch(50, 10))
    gate.set()
    await asyncio.wait_for(h.engine.wait_idle(), 30)
    await h.engine.stop(10)
    bodies = {json.loads(r.body)["payload_id"]: json.loads(r.body) for r in server.requests}
    assert sorted(bodies) == [f"p{i:06d}" for i in range(60)]
    assert [i for i in range(60) if "content" in bodies[f"p{i:06d}"]] == list(range(50, 60))
    assert h.counter("bubblefish_events_failed_total", "s") == 0


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_bug_while_delivering_keeps_the_worker_and_tries_the_events_again(
    server: WebhookServer, caplog: pytest.LogCaptureFixture, concurrency: int
) -> None:
    """An exception out of the delivery code (a bug: nothing the receiver does raises
    there) is logged with its traceback; the worker carries on, and the events it held
    are tried again (by the same worker in WAL order), not held for ever. The one stand-in:
    ``Sink.finish`` raising once, since a bug cannot be driven from outside."""
    h = Harness(events_cfg({"name": "s", "url": server.url, "concurrency": concurrency}))
    await h.engine.start()
    sink = h.engine.sinks["s"]
    real_finish = sink.finish
    calls = 0

    def finish_failing_once(job: Job, outcome: Literal["delivered", "failed"]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        real_finish(job, outcome)

    sink.finish = finish_failing_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="eventsinkd.delivery.sink"):
        await h.handle(batch(0, 5))
        await asyncio.wait_for(h.engine.wait_idle(), 30)
    assert "failed unexpectedly" in caplog.text and "RuntimeError: a bug" in caplog.text
    assert len(sink.workers) == concurrency
    await h.engine.stop(10)
    assert h.accounting("s") == (5, 5, 0, 0)
    assert sorted(set(server.ids)) == [f"memory_written:p{i:06d}" for i in range(5)]
    if concurrency == 1:  # the first event again, then the rest in WAL order
        assert server.ids == [f"memory_written:p{i:06d}" for i in (0, 0, 1, 2, 3, 4)]
