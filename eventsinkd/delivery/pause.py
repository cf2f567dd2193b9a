"""Pausing a sink whose receiver keeps failing, and probing until it answers.

A run of ``pause_after_failures`` retryable failures with no success (or an
event out of retries with no success since its first attempt) is an outage,
not bad events: the sink pauses. While paused, its events wait here; one probe
at a time takes the oldest on the backoff schedule (the last step repeating,
Retry-After honoured), and attempts made while paused count against no
event's ``max_retries``. The first success resumes the sink with every event
still held, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING

from eventsinkd.delivery.outcome import Outcome, backoff_delay
from eventsinkd.transports import Attempt

if TYPE_CHECKING:
    from eventsinkd.delivery.job import Job
    from eventsinkd.delivery.sink import Sink

log = logging.getLogger("eventsinkd.delivery.sink")


class Pause:
    def __init__(self, sink: Sink, threshold: int) -> None:
        self._sink = sink
        self.threshold = threshold
        self.since: float | None = None  # Unix time the sink paused; None while running
        self.failures_in_a_row = 0
        self.waiting: deque[Job] = deque()  # held while paused; probes take the oldest
        self._last_success_mono = float("-inf")
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def succeeded(self) -> None:
        self.failures_in_a_row = 0
        self._last_success_mono = time.monotonic()

    def is_outage(self, failed: Collection[Job], max_retries: int) -> bool:
        """Count one request whose ``failed`` jobs failed retryably; True when the sink must pause.

        A request counts once, whatever its batch size.
        """
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= self.threshold:
            return True
        # Out of retries: that event's own problem only if others got through meanwhile.
        return any(
            job.attempts > max_retries and self._last_success_mono < job.first_attempt_mono
            for job in failed
        )

    def begin(self, jobs: list[Job], result: Attempt) -> None:
        self.since = time.time()
        self.waiting.extend(jobs)
        log.warning(
            "sink %s: paused after %d failed attempt(s) in a row (last: %s); "
            "probing with one event at a time until the receiver answers",
            self._sink.name,
            self.failures_in_a_row,
            result.detail,
        )
        self._task = asyncio.create_task(
            self._probe(result.retry_after), name=f"sink-{self._sink.name}-probe"
        )

    def stop(self) -> list[Job]:
        """Stop probing; the events that were waiting (the sink decides what becomes of them)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        held, self.waiting = list(self.waiting), deque()
        return held

    async def _probe(self, retry_after: float | None) -> None:
        sink = self._sink
        probes = 0
        while self.waiting:
            probes += 1
            delay = backoff_delay(probes, sink.backoff, retry_after, sink.retry_after_max, sink.rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.draining.wait(), delay)
            if sink.draining.is_set() or not self.waiting:
                return
            job = self.waiting.popleft()
            result = await sink.send_one(job.event)
            retry_after = result.retry_after
            if result.outcome.retryable:
                # Next time probe the next event (one that keeps failing does not hold the
                # others up), except where WAL order is promised.
                (self.waiting.appendleft if sink.ordered else self.waiting.append)(job)
                continue
            self._end(probes)
            if result.outcome is Outcome.DELIVERED:
                sink.finish(job, "delivered")
            else:  # the receiver answered: it is up, and refuses this one event
                job.attempted()
                await sink.retries.give_up(job, result)
            return

    def _end(self, probes: int) -> None:
        since = self.since or time.time()
        self.since = None
        self.failures_in_a_row = 0
        self._task = None
        log.info(
            "sink %s: resumed after %.1fs paused (%d probe(s))",
            self._sink.name,
            time.time() - since,
            probes,
        )
        held, self.waiting = list(self.waiting), deque()
        self._sink.resume(held)
