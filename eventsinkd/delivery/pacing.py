"""A sink's ``rate_limit``: a token bucket that paces its requests, never drops.

Each request takes one token per event before it goes out. Tokens come back at
``rate`` per second, and the bucket holds at most ``burst``. A request that finds
too few waits until its tokens have come in; it reserves them first, so requests
waiting together go out in turn, each one ``events / rate`` after the one before
(the bucket may go into debt, and the waits queue up behind it). Over any time from
the bucket's start, no more than ``burst + rate x elapsed`` events go out.

The burst is a tenth of a second's worth (at least one event), and a batching
sink's batches are cut to it. Receivers with a quota usually count it per second;
a bucket that held a whole second's worth could let close to twice the quota through
in the second after a quiet spell. A tenth lets a handful of events written
together go out at once, and no request carries more than a tenth of a second's
quota. It costs no throughput: while events wait, the bucket is in debt, and debt is
never capped.

What waits is the worker and its batch: the sink holds no more events than
``max_inflight`` as always, so in block mode the WAL keeps the rest, and in drop mode
the queue fills and new events are dropped as usual.
"""

from __future__ import annotations

import asyncio
import time

BURST_S = 0.1  # the bucket holds this many seconds' worth of events (at least one event)


class TokenBucket:
    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, now: float | None = None) -> None:
        self.rate = rate  # events per second
        self.burst = max(1.0, rate * BURST_S)
        self._tokens = self.burst
        self._at = time.monotonic() if now is None else now

    @property
    def batch_cap(self) -> int:
        """The largest request (in events) this bucket lets go out at once."""
        return int(self.burst)

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` tokens at ``now``; the seconds to wait before sending (0: at once)."""
        tokens = self._level(now) - n
        self._tokens, self._at = tokens, now
        return self._wait(tokens)

    def delay(self, now: float) -> float:
        """How long a request of one event made at ``now`` would wait (for /status)."""
        return self._wait(self._level(now) - 1)

    def _level(self, now: float) -> float:
        """The tokens at ``now`` (negative: in debt)."""
        return min(self.burst, self._tokens + (now - self._at) * self.rate)

    def _wait(self, tokens: float) -> float:
        return 0.0 if tokens >= 0 else -tokens / self.rate

    async def take(self, n: int) -> None:
        """Wait until ``n`` events may go out."""
        wait = self.reserve(n, time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
