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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from eventsinkd.delivery.concurrency import AdaptiveConcurrency
from eventsinkd.delivery.pacing import TokenBucket
from eventsinkd.metrics import SinkMetrics
from eventsinkd.transports.contract import Attempt, Outcome, Transport, all_failed

if TYPE_CHECKING:
    from eventsinkd.events import Event

log = logging.getLogger("eventsinkd.delivery.sink")


class Requests:
    """The request path of one sink. It counts requests in the metrics; what the outcomes
    mean for the events is the sink's business."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        metrics: SinkMetrics,
        *,
        max_requests: int,
        adaptive: bool,
        rate_limit: float | None,
        on_resize: Callable[[int], None],
    ) -> None:
        self.name = name
        self.transport = transport
        self._metrics = metrics
        self._max_requests = max_requests
        self._on_resize = on_resize  # the adaptive limit moved: the sink's workers follow
        self.concurrency = AdaptiveConcurrency(max_requests) if adaptive else None
        self.bucket = TokenBucket(rate_limit) if rate_limit is not None else None

    @property
    def limit(self) -> int:
        """Requests (batches) the sink may have in flight now."""
        control = self.concurrency
        return control.limit if control is not None else self._max_requests

    def rate_limit_status(self, now: float) -> dict[str, float] | None:
        """The rate limit as ``/status`` shows it; None without one."""
        bucket = self.bucket
        if bucket is None:
            return None
        # delay_s: how long a request would wait now (above 0, the limit is what paces the sink)
        delay = bucket.delay(now)
        return {"events_per_s": bucket.rate, "burst": bucket.burst, "delay_s": round(delay, 3)}

    async def send(self, events: Sequence[Event], *, worker: bool = True) -> Sequence[Attempt]:
        """One request for ``events``: an outcome per event, counted in the metrics; never raises.

        ``worker``: a worker's request (it counts for the adaptive concurrency).
        """
        if self.bucket is not None:
            await self.bucket.take(len(events))
        control = self.concurrency if worker else None
        sent = control.started() if control is not None else 0
        started = time.perf_counter()
        try:
            results = await self.transport.send(events)
        except asyncio.CancelledError:
            if control is not None:
                control.abandoned()
            raise
        except Exception as exc:  # a transport's bug must not stop the worker
            log.exception("sink %s: the transport failed", self.name)
            results = all_failed(events, Attempt(Outcome.CONNECTION, None, repr(exc)))
        now = time.perf_counter()
        m = self._metrics
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
                self._on_resize(control.limit)
        return results
