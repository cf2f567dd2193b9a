"""What one HTTP attempt means (shared/spec/events.md), and how long to wait before the next."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime
from enum import StrEnum


class Outcome(StrEnum):
    """Attempt outcome classes; the values are the ``outcome`` metric label."""

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


def backoff_delay(
    retry: int,
    schedule: list[float],
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
