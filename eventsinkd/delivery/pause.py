"""Pausing a sink whose receiver keeps failing, and probing until it answers.

When the retry policy calls a run of failures an outage (:mod:`eventsinkd.delivery.policy`),
the sink pauses: its events wait (the sink holds them), and one probe at a time takes
the oldest on the backoff schedule (the last step repeating, Retry-After honoured).
Attempts made while paused count against no event's ``max_retries``. The first answer
that is not a retryable failure ends the pause; the sink then decides what becomes of
the probed event and sends every event still held, oldest first.

The probe gets what it needs from the sink as callables and writes none of its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventsinkd.delivery.job import Job
    from eventsinkd.transports.contract import Attempt

log = logging.getLogger("eventsinkd.delivery.sink")


class Pause:
    def __init__(
        self,
        name: str,
        *,
        delay: Callable[[int, Attempt], float],
        oldest: Callable[[], Job | None],
        send: Callable[[Job], Awaitable[Attempt]],
        answered: Callable[[Job, Attempt], Awaitable[None]],
        closing: asyncio.Event,
    ) -> None:
        self._name = name
        self._delay = delay  # the wait before probe number n after an attempt
        self._oldest = oldest  # the next event to probe with (None: nothing left)
        self._send = send  # one attempt beside the workers; a retryable failure puts it back
        self._answered = answered  # the receiver answered: the sink resumes
        self._closing = closing
        self.since: float | None = None  # Unix time the sink paused; None while running
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def begin(self, failures_in_a_row: int, last: Attempt) -> None:
        self.since = time.time()
        log.warning(
            "sink %s: paused after %d failed attempt(s) in a row (last: %s); "
            "probing with one event at a time until the receiver answers",
            self._name,
            failures_in_a_row,
            last.detail,
        )
        self._task = asyncio.create_task(self._probe(last), name=f"sink-{self._name}-probe")

    def stop(self) -> None:
        """Stop probing (shutdown)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _probe(self, last: Attempt) -> None:
        probes = 0
        while True:
            probes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._delay(probes, last))
            job = None if self._closing.is_set() else self._oldest()
            if job is None:
                return
            last = await self._send(job)
            if last.outcome.retryable:
                continue
            self._end(probes)
            await self._answered(job, last)
            return

    def _end(self, probes: int) -> None:
        since = self.since or time.time()
        self.since = None
        self._task = None
        log.info(
            "sink %s: resumed after %.1fs paused (%d probe(s))",
            self._name,
            time.time() - since,
            probes,
        )
