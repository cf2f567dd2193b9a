"""What every transport promises: one :class:`Attempt` per event, its :class:`Outcome`.

A transport only opens its connection, sends a batch of at most ``max_batch`` events,
and says for each event what became of it (shared/spec/events.md). It never raises for
trouble with the receiver: that is an attempt with a retryable or permanent outcome.
HTTP statuses are classified here, and Retry-After read; the other protocols map their
answers onto the same outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from eventsinkd.events import Event


class Outcome(StrEnum):
    """What became of an event's attempt; the values are the ``outcome`` metric label."""

    DELIVERED = "delivered"  # 2xx
    RETRY_STATUS = "retry_status"  # 408, 425, 429, 5xx
    PERMANENT = "permanent"  # any other status (3xx, 4xx incl. 410)
    TIMEOUT = "timeout"
    CONNECTION = "connection_error"

    @property
    def retryable(self) -> bool:
        return self in (Outcome.RETRY_STATUS, Outcome.TIMEOUT, Outcome.CONNECTION)


_RETRY_STATUSES = frozenset({408, 425, 429})


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in _RETRY_STATUSES or 500 <= status < 600:
        return Outcome.RETRY_STATUS
    return Outcome.PERMANENT


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: ASCII digits (delta-seconds) or an HTTP date;
    anything else is ignored (None), never an error."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²" and "٣"
        return float(value)
    if not value.isascii():
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Attempt(NamedTuple):
    outcome: Outcome
    retry_after: float | None  # seconds the receiver asked us to wait (Retry-After)
    detail: str  # for logs, /status and dead letters: "HTTP 503", "connection refused"...


class Transport(Protocol):
    max_batch: int  # at most this many events per send()

    async def open(self) -> None:
        """Get ready to send (a session, a connection). A receiver that is down is not an error:
        sending fails until it is back."""

    async def send(self, events: Sequence[Event]) -> Sequence[Attempt]:
        """Send ``events`` once; one attempt per event, in the same order. Never raises for
        trouble with the receiver."""

    async def close(self) -> None:
        """Release what :meth:`open` took; safe to call more than once."""


def all_failed(events: Sequence[Event], attempt: Attempt) -> list[Attempt]:
    """The same attempt for every event of a batch (the request as a whole failed)."""
    return [attempt] * len(events)


class Tally(Protocol):
    """A counter a transport adds to (a Prometheus counter's child with its labels set)."""

    def inc(self, amount: float = 1) -> None: ...
