"""What becomes of a sink's failed events: a retry after its backoff, or a dead letter.

A retryable failure waits out its backoff (Retry-After honoured) *parked* on a timer,
not occupying a worker; in WAL order (``concurrency: 1``, ``order: wal``) the one worker
waits instead, since order matters more. A run of failures with no success is an outage
and pauses the sink (:mod:`eventsinkd.delivery.pause`). An event given up on while the
receiver otherwise works - a permanent 4xx/3xx, or ``max_retries`` used up - becomes a
dead letter; one that cannot be stored is not finished, and is tried again later.
At shutdown a failed event gets no retry: it goes to the sink's successor (a reload) or
is left unfinished, to be read again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from eventsinkd.delivery.outcome import backoff_delay
from eventsinkd.secrets import scrub
from eventsinkd.state.deadletters import DeadLetter
from eventsinkd.state.letterwriter import DeadLetterWriter
from eventsinkd.transports import Attempt

if TYPE_CHECKING:
    from eventsinkd.delivery.job import Job
    from eventsinkd.delivery.sink import Sink

log = logging.getLogger("eventsinkd.delivery.sink")


class Retries:
    def __init__(
        self,
        sink: Sink,
        dead_letters: DeadLetterWriter | None,
        requeue: Callable[[Job], None],
    ) -> None:
        self._sink = sink
        self._dead_letters = dead_letters
        self._requeue = requeue  # back in the sink's queue
        self.parked: dict[Job, asyncio.TimerHandle] = {}  # waiting out their backoff

    async def failed(self, failed: list[tuple[Job, Attempt]]) -> list[Job]:
        """Decide what becomes of each failed job; returns those the (ordered) worker retries."""
        sink = self._sink
        for job, _ in failed:
            job.attempted()
        retryable = {job for job, result in failed if result.outcome.retryable}
        if retryable and sink.draining.is_set():
            for job, _ in failed:
                if job not in retryable:
                    continue
                if sink.successor is not None:
                    sink.hand_over(job)
                else:  # its one try at shutdown did not get through: left unfinished
                    sink.leave_unfinished(job)
            retryable = set()
        elif retryable and sink.pause.is_outage(retryable, sink.cfg.max_retries):
            held = [(job, result) for job, result in failed if job in retryable]
            sink.pause.begin([job for job, _ in held], held[-1][1])
            retryable = set()
        retry: list[Job] = []
        wait = 0.0
        for job, result in failed:
            if job in retryable and job.attempts <= sink.cfg.max_retries:
                delay = backoff_delay(
                    job.attempts, sink.backoff, result.retry_after, sink.retry_after_max, sink.rng
                )
                sink.metrics.retries.inc()
                if sink.ordered:
                    retry.append(job)
                    wait = max(wait, delay)
                else:
                    self.park(job, delay)
            elif not result.outcome.retryable or job in retryable:
                await self.give_up(job, result)
        if retry:
            # WAL order: order over throughput, so the one worker waits (until shutdown).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.draining.wait(), wait)
        return retry

    async def give_up(self, job: Job, result: Attempt) -> None:
        """A permanent failure, or retries used up while the receiver works: a dead letter."""
        sink = self._sink
        event = job.event
        if self._dead_letters is not None:
            letter = DeadLetter(
                sink=sink.name,
                webhook_id=event.id,
                event_type=event.type,
                timestamp=event.timestamp,
                body=event.body(sink.cfg.content),
                attempts=job.attempts,
                first_attempt=job.first_attempt,
                last_attempt=time.time(),
                last_outcome=scrub(result.detail),  # kept on disk, shown by the CLI
            )
            try:
                await self._dead_letters.add(letter)
            except Exception as exc:  # the state directory is full, unwritable or damaged
                # Not finished: block mode must not pass an event that is neither
                # delivered nor kept. Try the whole thing again later. The store's failure
                # is a problem of the daemon (logged there, once, then counted).
                log.debug("sink %s: cannot store dead letter %s: %s", sink.name, event.id, exc)
                self.park(job, sink.backoff[-1])
                return
        sink.finish(job, "failed")
        sink.rlog.log(
            logging.WARNING,
            "failed",
            "sink %s: event %s failed after %d attempt(s) (%s); kept as a dead letter",
            sink.name,
            event.id,
            job.attempts,
            result.detail,
        )

    def park(self, job: Job, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self.parked[job] = loop.call_later(delay, self._unpark, job)

    def _unpark(self, job: Job) -> None:
        if self.parked.pop(job, None) is not None:
            self._requeue(job)

    def unpark_all(self) -> list[Job]:
        """Every parked job, its timer cancelled (shutdown: each gets one more try now)."""
        jobs = list(self.parked)
        for handle in self.parked.values():
            handle.cancel()
        self.parked.clear()
        return jobs
