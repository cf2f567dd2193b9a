"""Everything a sink holds, and its counts: the one writer of a sink's job state.

A job the sink has taken is *held* until it is finished (delivered, or given up on
and kept as a dead letter), handed to the sink that replaced this one, or left
unfinished at shutdown (block mode reads it again after a restart). While held it
is in exactly one place: the queue, a request in flight, *parked* on a timer for
its retry, *waiting* out a pause, or behind an earlier event of its key
(:mod:`eventsinkd.delivery.keyorder`). The counts obey one rule, at every moment:

    offered = delivered + failed + dropped + filtered + held

(``filtered``: events the sink's transform said not to send, finished as soon as taken;
``held`` is the ``queue_depth`` of ``/status`` and the metrics; at shutdown what is
left is counted as dropped, so a stopped sink holds nothing.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

from eventsinkd.delivery.job import Job, SinkStats
from eventsinkd.delivery.keyorder import SinkOrder
from eventsinkd.metrics import SinkMetrics


class Ledger:
    def __init__(
        self,
        max_inflight: int,
        stats: SinkStats,
        metrics: SinkMetrics,
        order: SinkOrder | None,
        queue: asyncio.Queue[Job],
    ) -> None:
        self.max_inflight = max_inflight
        # A sink reconfigured by a reload shares its predecessor's figures, as the
        # Prometheus counters of the same name do.
        self.stats = stats
        self._metrics = metrics
        self._order = order
        self._queue = queue  # the workers take from it
        self.inflight = 0  # held: queued, in flight, parked, waiting out a pause or behind a key
        self._held: set[Job] = set()
        self._parked: dict[Job, asyncio.TimerHandle] = {}  # waiting out their backoff
        self.waiting: deque[Job] = deque()  # held while the sink is paused; probes take the oldest
        self._left = 0  # given back unfinished at shutdown (their last try failed)
        # Set while there is room (and at shutdown, so that nobody waits for room for ever).
        self.room = asyncio.Event()
        self.room.set()
        self.idle = asyncio.Event()  # set while nothing is held
        self.idle.set()
        # While a reload hands this sink's events over: where a released key's next event goes.
        self.successor: Callable[[Job], None] | None = None

    # -- taking ------------------------------------------------------------------------

    def offered(self) -> None:
        self.stats.offered += 1
        self._metrics.offered.inc()

    def dropped(self, n: int = 1) -> None:
        self.stats.dropped += n
        self._metrics.dropped.inc(n)

    def filtered(self) -> None:
        """An event offered and finished at once: the sink's transform said not to send it."""
        self.stats.filtered += 1
        self._metrics.filtered.inc()

    def adopt(self, job: Job, *, older: bool = False) -> None:
        """Hold ``job``: queued now, or behind the event of its key that is out."""
        self.inflight += 1
        self.idle.clear()
        self._held.add(job)
        if self._order is None or job.key is None or self._order.admit(job, older=older):
            self._queue.put_nowait(job)

    def holds(self, job: Job) -> bool:
        return job in self._held

    def sendable(self, jobs: Iterable[Job]) -> list[Job]:
        """Those of ``jobs`` a worker still has in hand (not finished, parked or waiting)."""
        return [
            j for j in jobs if j in self._held and j not in self._parked and j not in self.waiting
        ]

    @property
    def has_room(self) -> bool:
        return self.inflight < self.max_inflight

    # -- finishing ---------------------------------------------------------------------

    def finish(self, job: Job, outcome: Literal["delivered", "failed"]) -> None:
        """``job`` is done with: delivered, or given up on (and kept as a dead letter)."""
        now = time.time()
        if outcome == "delivered":
            self.stats.delivered += 1
            self._metrics.delivered.inc()
            self.stats.last_success = now
            wal_time = job.event.wal_time
            if wal_time is not None:
                self._metrics.latency.observe(max(0.0, now - wal_time))
        else:
            self.stats.failed += 1
            self._metrics.failed.inc()
        self.release(job)

    def release(self, job: Job, *, chain: bool = True) -> None:
        """``job`` is no longer held (finished or handed over); the next of its key goes out."""
        self._held.discard(job)
        self.inflight -= 1
        if chain and self._order is not None and job.key is not None:
            # The next event of its key goes out, or, handed over, the rest follow it.
            nxt = self._order.done(job)
            while nxt is not None and self.successor is not None:
                self.successor(nxt)
                self.release(nxt, chain=False)
                nxt = self._order.done(nxt)
            if nxt is not None:
                self._queue.put_nowait(nxt)
        if self.inflight < self.max_inflight:
            self.room.set()
        if self.inflight == 0:
            self.idle.set()

    def leave_unfinished(self, job: Job) -> None:
        """Its last try at shutdown failed: it stays unfinished (read again after a restart), and
        so do the events of its key behind it, which must not overtake it."""
        behind = self._order.behind(job) if self._order and job.key is not None else []
        for left in (job, *behind):
            self._left += 1
            self.release(left, chain=False)

    def close(self) -> int:
        """Shutdown: whatever is still held is left unfinished and counted as dropped."""
        left = self.inflight + self._left
        if left:
            self.dropped(left)
        self.inflight = 0
        self._held.clear()
        if self._order is not None:
            self._order.close()
        return left

    # -- retries and pauses --------------------------------------------------------------

    def park(self, job: Job, delay: float) -> None:
        """``job`` waits ``delay`` seconds for its retry, then goes back in the queue."""
        loop = asyncio.get_running_loop()
        self._parked[job] = loop.call_later(delay, self._unpark, job)

    def _unpark(self, job: Job) -> None:
        if self._parked.pop(job, None) is not None:
            self._queue.put_nowait(job)

    def unpark_all(self) -> None:
        """Every parked job back in the queue now, its timer cancelled (shutdown: one more try)."""
        for job, handle in self._parked.items():
            handle.cancel()
            self._queue.put_nowait(job)
        self._parked.clear()

    def wait_out_pause(self, jobs: Iterable[Job]) -> None:
        self.waiting.extend(jobs)

    def oldest_waiting(self) -> Job | None:
        return self.waiting.popleft() if self.waiting else None

    def wait_again(self, job: Job, *, first: bool) -> None:
        """A probe with ``job`` failed: it waits again, first in line or last."""
        (self.waiting.appendleft if first else self.waiting.append)(job)

    def resume(self) -> None:
        """The pause is over: every waiting job goes out again, oldest first, then whatever was
        queued meanwhile (drop mode keeps queueing), and new events come in."""
        held = list(self.waiting)
        self.waiting.clear()
        while not self._queue.empty():
            held.append(self._queue.get_nowait())
        for job in held:
            self._queue.put_nowait(job)
        self.room.set()

    def take_all(self) -> list[Job]:
        """Everything waiting out a pause and queued, in that order (a reload hands them over)."""
        jobs = list(self.waiting)
        self.waiting.clear()
        while not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        return jobs

    def in_hand(self) -> list[Job]:
        """What is held and neither queued nor waiting: cut off in flight at shutdown."""
        return [job for job in self._held if not job.waiting]
