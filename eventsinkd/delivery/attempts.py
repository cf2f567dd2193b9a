"""One request of a sink: paced by its rate limit, timed for its concurrency, counted.

Every request a sink makes goes through :meth:`Requests.send`: a batch from a
worker, a probe while paused, a dead letter's replay. All of them wait for the rate
limit's tokens (a receiver's quota counts every request). Only the workers' requests
feed the adaptive concurrency: a probe or a replay is one request beside the
workers, and a paused sink's failures say the receiver is down, which the pause
already handles (its limit is where the trouble began once it is back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eventsinkd.delivery.concurrency import AdaptiveConcurrency
from eventsinkd.delivery.outcome import Outcome
from eventsinkd.delivery.pacing import TokenBucket
from eventsinkd.secrets import scrub
from eventsinkd.transports import Attempt, all_failed

if TYPE_CHECKING:
    from eventsinkd.delivery.sink import Sink
    from eventsinkd.events import Event

log = logging.getLogger("eventsinkd.delivery.sink")


class Requests:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        cfg = sink.cfg
        self.concurrency = AdaptiveConcurrency(cfg.max_requests) if cfg.adaptive else None
        self.bucket = TokenBucket(cfg.rate_limit) if cfg.rate_limit is not None else None

    @property
    def limit(self) -> int:
        """Requests (batches) the sink may have in flight now."""
        control = self.concurrency
        return control.limit if control is not None else self._sink.cfg.max_requests

    async def send(self, events: Sequence[Event], *, worker: bool = True) -> Sequence[Attempt]:
        """One request for ``events``, counted in the metrics; never raises.

        ``worker``: a worker's request (it counts for the adaptive concurrency).
        """
        sink = self._sink
        if self.bucket is not None:
            await self.bucket.take(len(events))
        control = self.concurrency if worker else None
        sent = control.started() if control is not None else 0
        started = time.perf_counter()
        try:
            results = await sink.transport.send(events)
        except asyncio.CancelledError:
            if control is not None:
                control.abandoned()
            raise
        except Exception as exc:  # a transport's bug must not stop the worker
            log.exception("sink %s: the %s transport failed", sink.name, sink.cfg.type)
            results = all_failed(events, Attempt(Outcome.CONNECTION, None, repr(exc)))
        now = time.perf_counter()
        m = sink.metrics
        m.duration.observe(now - started)
        delivered = 0
        for result in results:
            if result.outcome is Outcome.DELIVERED:
                delivered += 1
        if delivered:
            m.attempts[Outcome.DELIVERED].inc(delivered)  # once per outcome, not per event
        back_pressure = False
        if delivered < len(results):
            failed = Counter(r.outcome for r in results if r.outcome is not Outcome.DELIVERED)
            for outcome, n in failed.items():
                m.attempts[outcome].inc(n)
            back_pressure = any(outcome.retryable for outcome in failed)
        if control is not None:
            rtt = now - started if delivered else None
            if control.finished(now, rtt, back_pressure, sent):
                sink.workers.resize(control.limit)
        if delivered:
            sink.pause.succeeded()  # the receiver works (it took all or part of the batch)
        if delivered == len(results):
            return results
        self._failed(events, results)
        return results

    def _failed(self, events: Sequence[Event], results: Sequence[Attempt]) -> None:
        sink = self._sink
        event, result = next(
            (e, r)
            for e, r in zip(events, results, strict=True)
            if r.outcome is not Outcome.DELIVERED
        )
        sink.stats.last_failure = time.time()
        sink.stats.last_error = scrub(result.detail)  # a library's message may quote a URL
        sink.rlog.log(
            logging.WARNING,
            f"attempt:{result.outcome.value}",
            "sink %s: attempt for %s: %s",
            sink.name,
            event.id,
            result.detail,
        )
