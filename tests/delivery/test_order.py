"""Order per key (``order: subject``...): each key's events in WAL order, retries, pauses,
reloads and restarts included, while different keys go in parallel.

Receivers are real (aiohttp on 127.0.0.1, and the strict OTLP peer); the restart test runs
the real daemon, killed with SIGKILL and stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from daemon_harness import Daemon, kill9, metric_value, sink_status, until
from engine_harness import Harness, entry, events_cfg

from eventsinkd.delivery.job import Job
from eventsinkd.delivery.keyorder import KeyOrder
from eventsinkd.devtools.peers.otlp import Answer, OtlpPeer, Request, log_record_id
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.events import Event
from eventsinkd.wal.batches import Batch, Record
from eventsinkd.wal.position import Position

SUBJECTS = 6


def keyed(start: int, n: int, keys: int = SUBJECTS) -> Batch:
    """Entries ``start``.. with subjects user:0..user:<keys-1> in turn."""
    recs = [
        Record(entry(i, subject=f"user:{i % keys}"), "wal-1.jsonl", i + 1)
        for i in range(start, start + n)
    ]
    return Batch(recs, Position("wal-1.jsonl", start + n))


def wid(i: int) -> str:
    return f"memory_written:p{i:06d}"


def wal_order(ids: list[str], subject_of: Callable[[str], str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        out[subject_of(i)].append(i)
    return out


def first_successes(delivered: list[str]) -> list[str]:
    """Each id once, in the order of its first delivery."""
    return list(dict.fromkeys(delivered))


class Keyed:
    """A receiver's behaviour that checks order per subject as it goes.

    It answers after ``delay_s``; ``fail(n, id, tries)`` says which attempts get a 503.
    ``same_key_overlap`` counts requests that arrived while another of their subject was
    still being answered (order per key allows none); ``max_keys`` is the most subjects
    in flight at once (parallel keys). ``delivered`` are the ids answered 2xx, in order.
    """

    def __init__(self, fail: Callable[[int, str, int], bool], delay_s: float = 0.01) -> None:
        self.fail = fail
        self.delay_s = delay_s
        self.in_flight: Counter[str] = Counter()
        self.same_key_overlap = 0
        self.max_keys = 0
        self.tries: Counter[str] = Counter()
        self.delivered: list[str] = []
        self.subject: dict[str, str] = {}  # webhook-id -> its subject

    async def __call__(self, n: int, r: web.Request) -> web.StreamResponse:
        subject = orjson.loads(await r.read())["subject"]
        event_id = r.headers["webhook-id"]
        self.subject[event_id] = subject
        self.tries[event_id] += 1
        self.same_key_overlap += self.in_flight[subject] > 0
        self.in_flight[subject] += 1
        self.max_keys = max(self.max_keys, sum(1 for v in self.in_flight.values() if v))
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail(n, event_id, self.tries[event_id]):
                return web.Response(status=503)
            self.delivered.append(event_id)
            return web.Response(status=200)
        finally:
            self.in_flight[subject] -= 1


@pytest.fixture
async def server() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


# -- the gate itself ------------------------------------------------------------------------


def job(i: int, key: str) -> Job:
    return Job(Event.stored("memory_written", wid(i), "", b"{}"), key)


def test_one_event_per_key_out_and_the_next_when_it_is_done() -> None:
    order = KeyOrder()
    a1, b1, a2, a3 = job(1, "a"), job(2, "b"), job(3, "a"), job(4, "a")
    assert [order.admit(j) for j in (a1, b1, a2, a3)] == [True, True, False, False]
    assert order.waiting == 2 and a2.waiting and a3.waiting
    assert order.done(b1) is None  # b is free
    assert order.done(a1) is a2 and not a2.waiting
    assert order.done(a2) is a3
    assert order.done(a3) is None and order.waiting == 0
    assert not order.holds("a") and not order.holds("b")


def test_events_handed_over_go_ahead_of_the_successors_own() -> None:
    old, new = KeyOrder(), KeyOrder()
    a1, a2, a3 = job(1, "a"), job(2, "a"), job(3, "a")  # WAL order; a1, a2 in the old sink
    assert old.admit(a1) and not old.admit(a2)
    # The successor reads a3 while the old sink still has key a: a3 waits, blocked.
    assert not new.admit(a3, elsewhere=old.holds)
    assert new.blocked() == ["a"]
    # The old sink hands a1 and then a2 over: they go ahead of a3, oldest first.
    assert new.admit(a1, older=True)
    assert old.done(a1) is a2
    assert not new.admit(a2, older=True)
    assert old.done(a2) is None and not old.holds("a")
    assert new.unblock("a") is None  # a1 is out here already
    assert new.done(a1) is a2 and new.done(a2) is a3 and new.done(a3) is None


def test_a_blocked_key_goes_out_when_the_predecessor_lets_it_go() -> None:
    old, new = KeyOrder(), KeyOrder()
    a1, a2 = job(1, "a"), job(2, "a")
    assert old.admit(a1)
    assert not new.admit(a2, elsewhere=old.holds)
    assert new.unblock("a", old.holds) is None  # still held there
    assert old.done(a1) is None  # delivered by the old sink
    assert new.unblock("a", old.holds) is a2 and new.holds("a")


def test_chain_frees_a_key_with_what_waited_behind_it() -> None:
    order = KeyOrder()
    a1, a2, a3 = job(1, "a"), job(2, "a"), job(3, "a")
    for j in (a1, a2, a3):
        order.admit(j)
    assert order.chain("a") == [a2, a3]
    assert order.waiting == 0 and not order.holds("a") and not a2.waiting


# -- a sink with order: subject ----------------------------------------------------------------


async def test_each_subject_keeps_wal_order_under_retries_and_a_pause_while_subjects_overlap(
    server: WebhookServer,
) -> None:
    n = 300

    def fail(k: int, event_id: str, tries: int) -> bool:
        i = int(event_id[-6:])
        return (i % 7 == 0 and tries == 1) or 120 <= k < 135  # retries, then an outage

    keyed_rx = Keyed(fail, delay_s=0.005)
    server.behaviour = keyed_rx
    cfg = events_cfg(
        {"name": "s", "url": server.url, "order": "subject", "max_retries": 5},
        retry_backoff_seconds=[0.02, 0.05],
        pause_after_failures=5,
        overflow="block",
        max_inflight=100,
    )
    h = Harness(cfg)
    await h.engine.start()
    sink = h.engine.sinks["s"]
    try:
        for start in range(0, n, 50):
            await h.handle(keyed(start, 50))
        await asyncio.wait_for(h.engine.wait_idle(), 60)
    finally:
        await h.engine.stop(5)
    assert h.accounting("s") == (n, n, 0, 0)
    assert sink.stats.delivered == n and sink.paused_since is None
    got = wal_order(first_successes(keyed_rx.delivered), lambda i: f"user:{int(i[-6:]) % 6}")
    want = wal_order([wid(i) for i in range(n)], lambda i: f"user:{int(i[-6:]) % 6}")
    assert got == want
    assert keyed_rx.same_key_overlap == 0
    assert keyed_rx.max_keys >= 2  # different subjects were in flight together
    assert max(keyed_rx.tries.values()) >= 2  # and some events were retried
    assert h.acks["s"][-1] == Position("wal-1.jsonl", n)


async def test_a_reload_keeps_each_subjects_order_across_the_handover(
    server: WebhookServer,
) -> None:
    n = 400
    keyed_rx = Keyed(lambda _k, event_id, tries: int(event_id[-6:]) % 5 == 0 and tries == 1, 0.02)
    server.behaviour = keyed_rx

    def config(max_concurrency: int) -> dict[str, object]:
        return {
            "name": "s",
            "url": server.url,
            "order": "subject",
            "max_retries": 5,
            "max_concurrency": max_concurrency,
        }

    extra: dict[str, object] = {"overflow": "block", "max_inflight": 100}
    h = Harness(events_cfg(config(64), **extra))
    await h.engine.start()

    async def feed() -> None:
        for start in range(0, n, 20):
            await h.handle(keyed(start, 20))

    feeding = asyncio.create_task(feed())
    try:
        await until(lambda: len(keyed_rx.delivered) >= 60)
        old = h.engine.sinks["s"]
        assert await h.engine.reconfigure(events_cfg(config(32), **extra)) == ["changed sink s"]
        assert h.engine.sinks["s"] is not old
        await asyncio.wait_for(feeding, 60)
        await until(lambda: len(set(keyed_rx.delivered)) == n, timeout_s=60)
    finally:
        feeding.cancel()
        await h.engine.stop(5)
    got = wal_order(first_successes(keyed_rx.delivered), lambda i: f"user:{int(i[-6:]) % 6}")
    want = wal_order([wid(i) for i in range(n)], lambda i: f"user:{int(i[-6:]) % 6}")
    assert got == want
    assert keyed_rx.same_key_overlap == 0
    assert h.counter("bubblefish_events_dropped_total", "s") == 0


async def test_a_batch_never_holds_two_events_of_one_subject() -> None:
    seen: list[list[str]] = []

    async def busy_then_ok(n: int, req: Request) -> Answer:
        seen.append([log_record_id(r) for r in req.records])
        return Answer(status=503) if n % 4 == 1 else Answer()

    peer = await OtlpPeer(busy_then_ok).start()
    n = 200
    cfg = events_cfg(
        {
            "name": "s",
            "type": "otlp",
            "url": peer.url,
            "order": "subject",
            "linger_ms": 20,
            "max_retries": 10,
        },
        retry_backoff_seconds=[0.01],
        pause_after_failures=1000,
        overflow="block",
    )
    h = Harness(cfg)
    await h.engine.start()
    try:
        for start in range(0, n, 50):
            await h.handle(keyed(start, 50, keys=4))
        await asyncio.wait_for(h.engine.wait_idle(), 60)
    finally:
        await h.engine.stop(5)
        await peer.stop()
    assert not peer.errors
    subject = {wid(i): i % 4 for i in range(n)}
    for ids in seen:
        subjects = [subject[i] for i in ids]
        assert len(subjects) == len(set(subjects)), ids
    assert max(len(ids) for ids in seen) >= 2  # a batch does hold several subjects
    got = wal_order(first_successes(peer.accepted_ids()), lambda i: str(subject[i]))
    want = wal_order([wid(i) for i in range(n)], lambda i: str(subject[i]))
    assert got == want


# -- the real daemon: kill -9 and SIGTERM in the middle ----------------------------------------


async def test_order_per_subject_holds_across_restarts_of_the_daemon(
    tmp_path: Path, server: WebhookServer
) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=64 * 1024)
    for _ in range(60):
        w.append(10)
    written = [f"memory_written:{x.payload_id}" for x in w.expected_data()]
    index = {event_id: k for k, event_id in enumerate(written)}
    keyed_rx = Keyed(lambda _k, event_id, tries: index[event_id] % 5 == 0 and tries == 1, 0.01)
    server.behaviour = keyed_rx
    sink = {
        "name": "s",
        "url": server.url,
        "order": "subject",
        "max_retries": 10,
        "rate_limit": 5000,  # (only to be seen in /status: it does not slow this test)
    }
    d = Daemon(tmp_path, [sink], overflow="block")
    await d.start()
    await until(lambda: len(keyed_rx.delivered) >= 120)
    st = await sink_status(d)
    assert st["order"] == "subject"
    assert st["concurrency"]["setting"] == "auto" and st["concurrency"]["max"] == 128
    assert 1 <= st["concurrency"]["current"] <= 128
    assert st["rate_limit"]["events_per_s"] == 5000 and st["rate_limit"]["burst"] == 500
    gauge = metric_value(await d.get("/metrics"), "eventsinkd_sink_concurrency", sink="s")
    assert 1 <= gauge <= 128
    await kill9(d)
    await d.start()
    await until(lambda: len(set(keyed_rx.delivered)) >= 350)
    assert await d.stop() == 0
    await d.start()
    await until(lambda: len(set(keyed_rx.delivered)) == len(written), timeout_s=90)
    assert await d.stop() == 0
    subject = keyed_rx.subject.__getitem__
    got = wal_order(first_successes(keyed_rx.delivered), subject)
    want = wal_order(written, subject)
    assert got == want
    assert len(want) == 3  # NexusWriter's subjects
    assert keyed_rx.max_keys >= 2
