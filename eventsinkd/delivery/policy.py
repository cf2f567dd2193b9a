"""What becomes of a failed event: retry after a delay, give up (a dead letter), or pause the sink.

The policy only *decides*; the sink acts on the decision (as Vector's ``RetryLogic``
returns a ``RetryAction`` to a generic driver). It keeps the one piece of state a
decision needs beyond the event: how many requests in a row failed with no success.

- A retryable failure (a 5xx, 408/425/429, a timeout, a connection error) is
  retried after its backoff, Retry-After honoured within ``retry_after_max``; the
  k-th retry waits the k-th step of the schedule (the last repeating), with jitter.
- A run of ``pause_after_failures`` failed requests with no success, or an event
  out of retries with no success since its first attempt, is an outage, not a bad
  event: every retryable event of that request waits out a pause instead.
- A permanent failure (any other status), or ``max_retries`` used up while the
  receiver otherwise works, gives up: the event becomes a dead letter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventsinkd.delivery.job import Job
    from eventsinkd.transports.contract import Attempt


class Action(Enum):
    RETRY = "retry"
    GIVE_UP = "give_up"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay_s: float = 0.0  # RETRY: how long to wait first


GIVE_UP = Decision(Action.GIVE_UP)
PAUSE = Decision(Action.PAUSE)


def backoff_delay(
    retry: int,
    schedule: Sequence[float],
    retry_after: float | None,
    retry_after_max: float,
    rng: random.Random,
) -> float:
    """Wait before retry number ``retry`` (1-based): Retry-After within its cap, else the schedule.

    The k-th retry waits the k-th value (the last repeating) with +-20% jitter, so
    events that failed together do not all come back in the same instant.
    """
    if retry_after is not None:
        return min(retry_after, retry_after_max) * rng.uniform(1.0, 1.1)
    base = schedule[min(retry, len(schedule)) - 1]
    return base * rng.uniform(0.8, 1.2)


class RetryPolicy:
    def __init__(
        self,
        *,
        backoff: Sequence[float],
        retry_after_max_s: float,
        max_retries: int,
        pause_after_failures: int,
        rng: random.Random | None = None,
    ) -> None:
        self.backoff = list(backoff)
        self.retry_after_max_s = retry_after_max_s
        self.max_retries = max_retries
        self.pause_after_failures = pause_after_failures
        self.rng = rng or random.Random()
        self.failures_in_a_row = 0  # failed requests since the last success
        self._last_success_mono = float("-inf")

    @property
    def longest_s(self) -> float:
        """The schedule's last (longest) step."""
        return self.backoff[-1]

    def succeeded(self) -> None:
        """The receiver took something: the run of failures is over."""
        self.failures_in_a_row = 0
        self._last_success_mono = time.monotonic()

    def resumed(self) -> None:
        """A pause ended (a probe got an answer)."""
        self.failures_in_a_row = 0

    def decide(self, failed: Sequence[tuple[Job, Attempt]]) -> list[Decision]:
        """One decision per failed job of one request, in order.

        Each job's attempt is already counted (``Job.attempted``). A request counts once
        towards the outage, whatever its batch size.
        """
        retryable = [job for job, result in failed if result.outcome.retryable]
        outage = bool(retryable) and self._is_outage(retryable)
        decisions: list[Decision] = []
        for job, result in failed:
            if not result.outcome.retryable:
                decisions.append(GIVE_UP)
            elif outage:
                decisions.append(PAUSE)
            elif job.attempts <= self.max_retries:
                decisions.append(Decision(Action.RETRY, self.delay(job.attempts, result)))
            else:
                decisions.append(GIVE_UP)
        return decisions

    def delay(self, retry: int, result: Attempt) -> float:
        """How long retry (or probe) number ``retry`` waits after ``result``."""
        return backoff_delay(
            retry, self.backoff, result.retry_after, self.retry_after_max_s, self.rng
        )

    def _is_outage(self, failed: Sequence[Job]) -> bool:
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= self.pause_after_failures:
            return True
        # Out of retries: that event's own problem only if others got through meanwhile.
        return any(
            job.attempts > self.max_retries and self._last_success_mono < job.first_attempt_mono
            for job in failed
        )
