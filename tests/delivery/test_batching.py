"""The transport-independent sink with a batching transport: batches, per-event outcomes.

The transport here is a stand-in that answers from a script (the one thing mocked):
what is under test is the sink around it - how it fills batches, retries only the
events that failed, counts a failed request once towards a pause, turns a refused
event into a failure and survives a transport that raises. Each real transport has
its own tests against a real server (tests/transports/test_transport_*.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

from engine_harness import Harness, batch, events_cfg

from eventsinkd.events import Event
from eventsinkd.transports.contract import Attempt, Outcome

OK = Attempt(Outcome.DELIVERED, None, "ok")
BUSY = Attempt(Outcome.RETRY_STATUS, None, "busy")
REFUSED = Attempt(Outcome.PERMANENT, None, "refused")
DOWN = Attempt(Outcome.CONNECTION, None, "down")


class Scripted:
    """A transport whose answer for each event comes from ``script(event_id, attempt_no)``."""

    max_batch = 10_000

    def __init__(self, script: Callable[[str, int], Attempt] = lambda _id, _n: OK) -> None:
        self.script = script
        self.batches: list[list[str]] = []
        self.tries: Counter[str] = Counter()
        self.raise_next = False
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        await asyncio.sleep(0)
        if self.raise_next:
            self.raise_next = False
            raise RuntimeError("a bug in a transport")
        ids = [e.id for e in events]
        self.batches.append(ids)
        out = []
        for i in ids:
            self.tries[i] += 1
            out.append(self.script(i, self.tries[i]))
        return out


def harness(transport: Scripted, *, max_batch: int = 10, **events: object) -> Harness:
    sink = {"name": "s", "type": "otlp", "url": "http://127.0.0.1:9", "max_batch": max_batch}
    h = Harness(events_cfg(sink, **events))
    h.engine.sinks["s"].transport = transport
    return h


async def deliver(h: Harness, n: int, *, stop_timeout_s: float = 5) -> None:
    await h.engine.start()
    await h.handle(batch(0, n))
    await asyncio.wait_for(h.engine.wait_idle(), 30)
    await h.engine.stop(stop_timeout_s)


async def test_queued_events_go_out_in_batches_of_at_most_max_batch() -> None:
    t = Scripted()
    h = harness(t, max_batch=10)
    await deliver(h, 95)
    assert t.opened and t.closed
    sizes = [len(b) for b in t.batches]
    assert sum(sizes) == 95 and max(sizes) == 10
    assert len({i for b in t.batches for i in b}) == 95  # each event once
    assert h.accounting("s") == (95, 95, 0, 0)


async def test_only_the_failed_events_of_a_batch_are_sent_again() -> None:
    flaky = {f"memory_written:p{i:06d}" for i in (3, 7, 8)}
    t = Scripted(lambda i, n: BUSY if i in flaky and n == 1 else OK)
    h = harness(t, pause_after_failures=100)
    await deliver(h, 10)
    assert all(t.tries[i] == 2 for i in flaky)
    assert all(n == 1 for i, n in t.tries.items() if i not in flaky)
    assert h.accounting("s") == (10, 10, 0, 0)
    assert h.counter("eventsinkd_delivery_retries_total", "s") == 3


async def test_a_refused_event_fails_alone_and_the_rest_of_its_batch_is_delivered() -> None:
    bad = "memory_written:p000004"
    t = Scripted(lambda i, _n: REFUSED if i == bad else OK)
    h = harness(t)
    await deliver(h, 10)
    assert t.tries[bad] == 1
    assert h.accounting("s") == (10, 9, 1, 0)


async def test_a_failed_batch_counts_once_towards_a_pause() -> None:
    # Ten events fail in one request: one failure in a row, not ten. With a threshold
    # of two the sink does not pause; the retry gets everything through.
    t = Scripted(lambda _i, n: DOWN if n == 1 else OK)
    h = harness(t, pause_after_failures=2)
    sink = h.engine.sinks["s"]
    paused: list[bool] = []
    t.script = lambda _i, n: (paused.append(sink.paused), DOWN if n == 1 else OK)[1]
    await deliver(h, 10)
    assert not any(paused)
    assert sink.paused_since is None
    assert h.accounting("s") == (10, 10, 0, 0)
    assert len(t.batches) >= 2


async def test_failed_requests_in_a_row_pause_and_a_success_resumes() -> None:
    t = Scripted(lambda _i, n: DOWN if n <= 3 else OK)
    h = harness(t, max_batch=5, pause_after_failures=2, max_inflight=100)
    sink = h.engine.sinks["s"]
    seen_paused: list[bool] = []

    def script(i: str, n: int) -> Attempt:
        seen_paused.append(sink.paused)
        return DOWN if n <= 3 else OK

    t.script = script
    await deliver(h, 5)
    assert any(seen_paused)  # it paused, probed and resumed
    assert not sink.paused
    assert h.accounting("s") == (5, 5, 0, 0)


async def test_a_transport_that_raises_fails_the_batch_and_the_worker_goes_on() -> None:
    t = Scripted()
    t.raise_next = True
    h = harness(t, pause_after_failures=100)
    await deliver(h, 10)
    assert h.accounting("s") == (10, 10, 0, 0)
    assert h.counter("eventsinkd_delivery_retries_total", "s") == 10
