"""The parts of a sink, each built on its own without a sink or a daemon.

The retry policy is pure; the ledger, the pause and the request path are driven on a
real event loop. The transport in the request-path tests is a stand-in answering from
a list (the one thing mocked: each real transport has its own tests against a real
server).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from engine_harness import entry

from eventsinkd.delivery.job import Job, SinkStats
from eventsinkd.delivery.keyorder import SinkOrder
from eventsinkd.delivery.pause import Pause
from eventsinkd.delivery.policy import GIVE_UP, PAUSE, Action, RetryPolicy
from eventsinkd.delivery.requests import Requests
from eventsinkd.delivery.sink.ledger import Ledger
from eventsinkd.events import Event
from eventsinkd.metrics import Metrics, SinkMetrics
from eventsinkd.transports.contract import Attempt, Outcome

OK = Attempt(Outcome.DELIVERED, None, "ok")
BUSY = Attempt(Outcome.RETRY_STATUS, None, "HTTP 503")
SLOW_DOWN = Attempt(Outcome.RETRY_STATUS, 7.0, "HTTP 429")
REFUSED = Attempt(Outcome.PERMANENT, None, "HTTP 400")


def job(i: int, key: str | None = None) -> Job:
    return Job(Event("memory_written", entry(i), ("summary",)), key)


def policy(**kw: object) -> RetryPolicy:
    args: dict[str, object] = {
        "backoff": [1.0, 5.0],
        "retry_after_max_s": 60.0,
        "max_retries": 2,
        "pause_after_failures": 3,
        "rng": random.Random(1),
    }
    args.update(kw)
    return RetryPolicy(**args)  # type: ignore[arg-type]


# -- the retry policy ------------------------------------------------------------------


def test_policy_retries_on_the_schedule_and_gives_up_when_retries_are_used() -> None:
    p = policy(pause_after_failures=100)
    j = job(0)
    delays = []
    for _ in range(3):
        j.attempted()
        (d,) = p.decide([(j, BUSY)])
        delays.append(d)
        p.succeeded()  # other events get through meanwhile
    assert [d.action for d in delays] == [Action.RETRY, Action.RETRY, Action.GIVE_UP]
    assert 0.8 <= delays[0].delay_s <= 1.2 and 4.0 <= delays[1].delay_s <= 6.0


def test_policy_honours_retry_after_within_its_cap() -> None:
    p = policy(retry_after_max_s=5.0)
    j = job(0)
    j.attempted()
    (d,) = p.decide([(j, SLOW_DOWN)])
    assert d.action is Action.RETRY and 5.0 <= d.delay_s <= 5.5


def test_policy_gives_up_on_a_permanent_failure_at_once() -> None:
    j = job(0)
    j.attempted()
    assert policy().decide([(j, REFUSED)]) == [GIVE_UP]


def test_policy_pauses_after_a_run_of_failed_requests_counting_each_request_once() -> None:
    p = policy(pause_after_failures=3)
    batch = [job(i) for i in range(10)]
    for j in batch:
        j.attempted()
    failed = [(j, BUSY) for j in batch]
    assert all(d.action is Action.RETRY for d in p.decide(failed))
    assert all(d.action is Action.RETRY for d in p.decide(failed))
    mixed = [*failed[:9], (batch[9], REFUSED)]
    assert p.decide(mixed) == [PAUSE] * 9 + [GIVE_UP]
    p.succeeded()
    assert p.failures_in_a_row == 0


def test_policy_calls_an_event_out_of_retries_with_no_success_since_an_outage() -> None:
    p = policy(max_retries=0, pause_after_failures=100)
    j = job(0)
    j.attempted()
    assert p.decide([(j, BUSY)]) == [PAUSE]  # nothing got through since its first attempt
    k = job(1)
    k.attempted()
    p.succeeded()  # another event got through after k's first attempt
    assert p.decide([(k, BUSY)]) == [GIVE_UP]  # others get through: this event's own problem


# -- the ledger ------------------------------------------------------------------------


def ledger(max_inflight: int = 3, order: bool = False) -> tuple[Ledger, asyncio.Queue[Job]]:
    queue: asyncio.Queue[Job] = asyncio.Queue()
    keyed = SinkOrder(queue.put_nowait, None) if order else None
    sink_metrics = SinkMetrics(Metrics(), "s")
    return Ledger(max_inflight, SinkStats(), sink_metrics, keyed, queue), queue


async def test_ledger_counts_every_event_in_exactly_one_place() -> None:
    led, queue = ledger()
    jobs = [job(i) for i in range(3)]
    for j in jobs:
        led.offered()
        led.adopt(j)
    assert not led.has_room
    led.finish(queue.get_nowait(), "delivered")
    led.finish(queue.get_nowait(), "failed")
    led.park(queue.get_nowait(), 0.01)
    s = led.stats
    assert (s.offered, s.delivered, s.failed, led.inflight) == (3, 1, 1, 1)
    assert await asyncio.wait_for(queue.get(), 5) is jobs[2]  # back from its timer
    assert led.close() == 1 and s.dropped == 1 and led.inflight == 0


async def test_ledger_sends_a_keys_next_event_when_the_one_out_is_finished() -> None:
    led, queue = ledger(max_inflight=10, order=True)
    first, second = job(0, "alice"), job(1, "alice")
    led.adopt(first)
    led.adopt(second)
    assert queue.qsize() == 1 and second.waiting
    led.finish(queue.get_nowait(), "delivered")
    assert queue.get_nowait() is second


async def test_ledger_resumes_waiting_events_ahead_of_those_queued_meanwhile() -> None:
    led, queue = ledger(max_inflight=10)
    held = [job(0), job(1)]
    for j in held:
        led.adopt(j)
        queue.get_nowait()
    led.wait_out_pause(held)
    late = job(2)
    led.adopt(late)
    led.resume()
    assert [queue.get_nowait() for _ in range(3)] == [*held, late]


# -- the pause -------------------------------------------------------------------------


async def test_pause_probes_the_oldest_until_an_answer_then_hands_it_back() -> None:
    line = [job(0), job(1)]
    answers = [BUSY, BUSY, OK]
    probed: list[Job] = []
    answered: list[tuple[Job, Attempt]] = []

    async def send(j: Job) -> Attempt:
        probed.append(j)
        result = answers.pop(0)
        if result.outcome.retryable:
            line.append(j)  # the sink puts it back in line
        return result

    async def done(j: Job, result: Attempt) -> None:
        answered.append((j, result))

    closing = asyncio.Event()
    pause = Pause(
        "s",
        delay=lambda _n, _last: 0.0,
        oldest=lambda: line.pop(0) if line else None,
        send=send,
        answered=done,
        closing=closing,
    )
    pause.begin(3, BUSY)
    assert pause.active
    for _ in range(200):
        if answered:
            break
        await asyncio.sleep(0.01)
    assert [j.event.id for j in probed] == [
        "memory_written:p000000",
        "memory_written:p000001",
        "memory_written:p000000",
    ]
    assert answered == [(probed[-1], OK)] and not pause.active


async def test_pause_stops_probing_when_the_sink_closes() -> None:
    closing = asyncio.Event()
    sent: list[Job] = []

    async def send(j: Job) -> Attempt:
        sent.append(j)
        return BUSY

    async def never(_j: Job, _r: Attempt) -> None:
        raise AssertionError("no answer expected")

    pause = Pause(
        "s",
        delay=lambda _n, _last: 30.0,
        oldest=lambda: job(0),
        send=send,
        answered=never,
        closing=closing,
    )
    pause.begin(3, BUSY)
    closing.set()
    await asyncio.sleep(0.05)
    assert sent == []
    pause.stop()


# -- the request path ------------------------------------------------------------------


class Answers:
    max_batch = 10

    def __init__(self, *answers: Sequence[Attempt] | Exception) -> None:
        self.answers = list(answers)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, events: Sequence[Event]) -> Sequence[Attempt]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_requests_count_outcomes_and_turn_a_transport_bug_into_a_failure() -> None:
    metrics = Metrics()
    resized: list[int] = []
    transport = Answers([OK, BUSY], RuntimeError("a bug"))
    requests = Requests(
        "s",
        transport,
        SinkMetrics(metrics, "s"),
        max_requests=4,
        adaptive=False,
        rate_limit=None,
        on_resize=resized.append,
    )
    events = [job(0).event, job(1).event]
    assert list(await requests.send(events)) == [OK, BUSY]
    (failed, _) = await requests.send(events)
    assert failed.outcome is Outcome.CONNECTION and "a bug" in failed.detail

    def attempts(outcome: str) -> float:
        value = metrics.registry.get_sample_value(
            "eventsinkd_delivery_attempts_total", {"sink": "s", "outcome": outcome}
        )
        return value or 0.0

    assert attempts("delivered") == 1 and attempts("retry_status") == 1
    assert attempts("connection_error") == 2
    assert requests.limit == 4 and resized == []


@pytest.mark.parametrize("rate", [None, 100.0])
def test_requests_show_their_rate_limit(rate: float | None) -> None:
    requests = Requests(
        "s",
        Answers(),
        SinkMetrics(Metrics(), "s"),
        max_requests=1,
        adaptive=True,
        rate_limit=rate,
        on_resize=lambda _n: None,
    )
    shown = requests.rate_limit_status(0.0)
    assert (shown is None) == (rate is None)
    if shown is not None:
        assert shown["events_per_s"] == rate
