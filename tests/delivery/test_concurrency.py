"""Adaptive concurrency: the controller's decisions (pure), and a sink backing off a receiver
whose latency rises and growing again when it recovers (real receiver on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from daemon_harness import until
from engine_harness import Harness, batch, events_cfg

from eventsinkd.delivery.concurrency import (
    DECREASE_RATIO,
    INITIAL_LIMIT,
    MIN_INTERVAL_S,
    AdaptiveConcurrency,
    Ewma,
)
from eventsinkd.devtools.peers.webhook import WebhookServer

MAX = 64


def controller(cap: int = MAX) -> AdaptiveConcurrency:
    """A controller that decides once per round trip however short: these tests are of its
    decisions (the floor on the interval has its own test)."""
    return AdaptiveConcurrency(cap, min_interval_s=0.0)


def round_trip(
    c: AdaptiveConcurrency,
    now: float,
    rtt: float,
    *,
    back_pressure: bool = False,
    busy: bool = True,
) -> float:
    """One round trip: ``limit`` requests out at once (``busy``, demand beyond the limit) or
    just one, all answered after ``rtt``. Returns the time then."""
    n = c.limit if busy else 1
    sent = [c.started() for _ in range(n)]
    now += rtt
    for stamp in sent:
        c.finished(now, None if back_pressure else rtt, back_pressure, stamp)
    return now + 1e-6  # (a moment later, so the next decision is due after the same rtt)


def limits(c: AdaptiveConcurrency, now: float, rtts: list[float], **kw: bool) -> list[int]:
    """The limit after each round trip of ``rtts``."""
    out = []
    for rtt in rtts:
        now = round_trip(c, now, rtt, **kw)
        out.append(c.limit)
    return out


def test_ewma_mean_and_deviation() -> None:
    e = Ewma(0.5)
    e.add(10.0)
    assert (e.mean, e.variance) == (10.0, 0.0)
    e.add(20.0)  # diff 10, step 5: mean 15, variance 0.5 * (0 + 10 * 5)
    assert (e.mean, e.variance) == (15.0, 25.0)
    assert e.deviation == 5.0


def test_slow_start_doubles_up_to_the_cap_while_the_round_trip_holds() -> None:
    c = controller()
    assert c.limit == INITIAL_LIMIT
    # The first round trip only sets the baseline; then each one doubles the limit.
    assert limits(c, 0.0, [0.01] * 7) == [4, 8, 16, 32, 64, 64, 64]
    assert c.decreases == 0


def test_without_demand_beyond_the_limit_it_does_not_grow() -> None:
    c = controller()
    assert limits(c, 0.0, [0.01] * 20, busy=False) == [INITIAL_LIMIT] * 20


def test_back_pressure_cuts_by_a_tenth_and_then_it_grows_by_one() -> None:
    c = controller()
    now = 0.0
    for _ in range(4):
        now = round_trip(c, now, 0.01)
    assert c.limit == 32
    now = round_trip(c, now, 0.01, back_pressure=True)  # e.g. a 429 or 503
    assert c.limit == int(32 * DECREASE_RATIO) == 28
    # Slow start is over: one more per round trip from here.
    assert limits(c, now, [0.01] * 3) == [29, 30, 31]


def test_a_sharp_rise_in_round_trip_cuts_and_a_steady_new_one_lets_it_grow_again() -> None:
    c = controller()
    now = 0.0
    for rtt in [0.010, 0.011, 0.009, 0.010, 0.011]:
        now = round_trip(c, now, rtt)
    before = c.limit
    after_rise = limits(c, now, [0.2])
    assert after_rise[0] < before
    # The receiver stays at 200 ms: once the baseline has caught up, the limit grows again.
    later = limits(c, now + 0.2, [0.2] * 30)
    assert later[-1] > after_rise[0]
    assert min(later) >= 1


def test_jitter_within_the_deviation_does_not_cut() -> None:
    c = controller()
    rtts = [0.0100, 0.0104, 0.0098, 0.0102, 0.0097] * 10
    seen = limits(c, 0.0, rtts)
    assert c.decreases == 0
    assert seen == sorted(seen) and seen[-1] == MAX


def test_never_below_one_nor_above_the_cap() -> None:
    c = controller(8)
    assert limits(c, 0.0, [0.01] * 10)[-1] == 8
    assert limits(c, 1.0, [0.01] * 50, back_pressure=True)[-1] == 1
    c = controller(2)
    assert c.limit == 2  # the initial limit never exceeds the cap


def test_after_an_outage_it_doubles_back_to_where_the_trouble_began() -> None:
    c = controller()
    now = 0.0
    for _ in range(4):
        now = round_trip(c, now, 0.01)
    now = round_trip(c, now, 0.01, back_pressure=True)
    assert (c.limit, c.threshold) == (28, 28)
    now = round_trip(c, now, 0.01)
    assert c.limit == 29
    # An outage: a run of back pressure takes it down to 1; the threshold stays where the run
    # began.
    for _ in range(40):
        now = round_trip(c, now, 0.01, back_pressure=True)
    assert (c.limit, c.threshold) == (1, int(29 * DECREASE_RATIO))
    assert limits(c, now, [0.01] * 7) == [2, 4, 8, 16, 26, 27, 28]


def test_one_decision_per_round_trip() -> None:
    c = controller()
    round_trip(c, 0.0, 0.01)  # the baseline: 10 ms, so the next decision comes at 0.02
    stamps = [c.started() for _ in range(4)]
    for t in (0.011, 0.012, 0.013):  # answers within the interval: no decision yet
        c.finished(t, None, True, stamps.pop())
    assert c.limit == INITIAL_LIMIT
    c.finished(0.021, None, True, stamps.pop())  # the first answer after it decides
    assert c.limit == 3
    for t in (0.022, 0.025, 0.03):  # the next interval runs until 0.031
        c.finished(t, None, True, c.started())
    assert c.limit == 3
    c.finished(0.032, None, True, c.started())
    assert c.limit == 2


def test_a_fast_receiver_is_judged_over_at_least_the_minimum_interval() -> None:
    c = AdaptiveConcurrency(MAX)
    now = round_trip(c, 0.0, 0.001)  # the baseline: 1 ms
    decided_at = [now]
    while now < 10 * MIN_INTERVAL_S:
        before = c.limit
        now = round_trip(c, now, 0.001)
        if c.limit != before:
            decided_at.append(now)
    # Doubling while the round trip holds, but one decision per interval, not per 1 ms.
    assert c.limit > INITIAL_LIMIT
    gaps = [b - a for a, b in itertools.pairwise(decided_at)]
    assert gaps and min(gaps) >= MIN_INTERVAL_S


def test_a_busy_sender_settles_low_instead_of_walking_to_the_cap() -> None:
    """A sender that is itself the bottleneck (a 0 ms receiver): each request waits for the
    others, so the round trip is the limit times the time one takes, plus now and then a
    few milliseconds when the process is busy elsewhere (the reader thread). Each request
    added lengthens the round trip by only 1/limit: judged against a baseline that follows
    it, that always looks "near", and the limit walked to the cap."""
    rng = random.Random(7)
    c = AdaptiveConcurrency(MAX)
    now, per_request, stalls_per_s, stall_s = 0.0, 80e-6, 40, 0.005
    seen = []
    while now < 20.0:
        rtt = c.limit * per_request
        if rng.random() < stalls_per_s * rtt:
            rtt += stall_s
        now = round_trip(c, now, rtt)
        seen.append(c.limit)
    settled = seen[len(seen) // 2 :]
    assert sum(settled) / len(settled) <= 16


def test_back_pressure_from_before_a_decrease_does_not_cut_again() -> None:
    c = controller()
    now = round_trip(c, 0.0, 0.01)
    stamps = [c.started() for _ in range(4)]
    c.finished(now + 0.011, None, True, stamps.pop())
    assert c.limit == 3
    # The rest of those requests were out before the decrease: their 503s are not news.
    for i, stamp in enumerate(stamps):
        c.finished(now + 0.02 + 0.01 * i, None, True, stamp)
    assert c.limit == 3
    # A request sent after it, refused too, is.
    c.finished(now + 0.06, None, True, c.started())
    assert c.limit == 2


def test_a_request_cut_off_says_nothing() -> None:
    c = controller()
    c.started()
    c.abandoned()
    assert (c.in_flight, c.limit) == (0, INITIAL_LIMIT)


# -- end to end: a real receiver whose latency rises, then recovers ------------------------


class Latency:
    """A receiver's behaviour: answer 204 after ``delay_s``."""

    def __init__(self) -> None:
        self.delay_s = 0.0

    async def __call__(self, _n: int, _r: web.Request) -> web.StreamResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=204)


@pytest.fixture
async def server() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


async def test_a_sink_backs_off_a_receiver_that_slows_and_grows_again_when_it_recovers(
    server: WebhookServer,
) -> None:
    latency = Latency()
    server.behaviour = latency
    cfg = events_cfg(
        {"name": "s", "url": server.url, "timeout_seconds": 60},
        overflow="block",
        max_inflight=400,
    )
    h = Harness(cfg)
    await h.engine.start()
    sink = h.engine.sinks["s"]
    control = sink.requests.concurrency
    assert control is not None  # concurrency: auto is the default

    async def feed() -> None:  # always more to send than the limit lets out
        i = 0
        while True:
            await h.handle(batch(i, 50))
            i += 50

    feeding = asyncio.create_task(feed())
    try:
        # Fast receiver: the limit grows past where it started.
        await until(lambda: control.limit >= 2 * INITIAL_LIMIT, timeout_s=60)
        before = control.limit
        # The receiver slows sharply: the sink backs off.
        latency.delay_s = 0.5
        await until(lambda: control.limit < before, timeout_s=60)
        slowest = control.limit
        assert control.decreases >= 1
        # It recovers: the sink grows again.
        latency.delay_s = 0.0
        await until(lambda: control.limit > slowest, timeout_s=60)
        # The gauge says what the controller says.
        assert h.counter("eventsinkd_sink_concurrency", "s") == control.limit
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await h.engine.stop(0.1)


async def test_a_pinned_concurrency_never_moves_and_1_keeps_wal_order(
    server: WebhookServer,
) -> None:
    cfg = events_cfg(
        {"name": "pinned", "url": server.url, "concurrency": 3},
        {"name": "wal", "url": server.url, "order": "wal"},
    )
    h = Harness(cfg)
    await h.engine.start()
    try:
        pinned, wal = h.engine.sinks["pinned"], h.engine.sinks["wal"]
        assert pinned.requests.concurrency is None and pinned.requests.limit == 3
        assert wal.requests.concurrency is None and wal.requests.limit == 1 and wal.ordered
        await h.handle(batch(0, 30))
        await asyncio.wait_for(h.engine.wait_idle(), 30)
        assert len(pinned.workers) == 3 and len(wal.workers) == 1
    finally:
        await h.engine.stop(1)
