"""What a sink keeps per event (a :class:`Job`) and for itself (:class:`SinkStats`)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from eventsinkd.events import Event


@dataclass(slots=True)
class SinkStats:
    offered: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    filtered: int = 0  # the sink's transform gave empty or null: not sent, finished
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None


_seq = itertools.count()


class Job:
    __slots__ = (
        "attempts",
        "event",
        "first_attempt",
        "first_attempt_mono",
        "key",
        "problem",
        "seq",
        "waiting",
    )

    def __init__(self, event: Event, key: str | None = None) -> None:
        self.event = event
        self.key = key  # with order per key: the value whose events keep their order
        self.seq = next(_seq)  # the order sinks took events in (WAL order), kept across a reload
        self.waiting = False  # waits behind an earlier event of its key (delivery.keyorder)
        self.attempts = 0  # attempts that count against max_retries (none while paused)
        self.first_attempt = 0.0  # Unix time, for dead letters
        self.first_attempt_mono = 0.0
        # Why it can never be sent (the sink's transform failed on it): a dead letter.
        self.problem: str | None = None

    def attempted(self) -> None:
        """Count an attempt against max_retries."""
        if self.attempts == 0:
            self.first_attempt, self.first_attempt_mono = time.time(), time.monotonic()
        self.attempts += 1
