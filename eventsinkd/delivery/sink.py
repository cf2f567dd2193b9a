"""One sink: a bounded queue of events, its transport and workers, batching, retries, pausing.

This is the same for every sink ``type``; only the transport
(:mod:`eventsinkd.transports`) knows the protocol. Nothing a sink does can
hold up another sink: each has its own queue, transport and workers, and a
retry waiting for its backoff is parked on a timer instead of occupying a
worker (except in WAL order, ``concurrency: 1`` or ``order: wal``, where order
matters more and the one worker waits). The number of events a sink holds -
queued, in flight, parked, waiting out a pause or behind an earlier event of
their key - never exceeds ``max_inflight``.

Its workers (:mod:`eventsinkd.delivery.workers`) number its concurrency limit,
fixed or adaptive (:mod:`eventsinkd.delivery.concurrency`); each sends up to the
transport's batch size at a time, waiting up to the sink's linger for a batch to
fill; each event of a batch has its own outcome, so only the ones that failed are
retried. Every request is paced by the sink's ``rate_limit``
(:mod:`eventsinkd.delivery.attempts`). With order per key
(:mod:`eventsinkd.delivery.keyorder`), an event goes out only once the one
before it of the same key is finished.

A receiver that keeps failing *pauses* the sink (:mod:`eventsinkd.delivery.pause`);
paused, it takes no new events in block mode (they wait in the WAL; in drop
mode the queue still fills to ``max_inflight``, as Nexus's does). What becomes of
a failed event - a retry, a dead letter - is in :mod:`eventsinkd.delivery.retries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Literal

from eventsinkd.config import EventsConfig
from eventsinkd.delivery.attempts import Requests
from eventsinkd.delivery.filters import EventFilter
from eventsinkd.delivery.job import Job, SinkStats
from eventsinkd.delivery.keyorder import SinkOrder
from eventsinkd.delivery.outcome import Outcome
from eventsinkd.delivery.pause import Pause
from eventsinkd.delivery.retries import Retries
from eventsinkd.delivery.workers import Workers
from eventsinkd.events import Event
from eventsinkd.metrics import Metrics, SinkMetrics
from eventsinkd.ratelimit import RateLimitedLog
from eventsinkd.sinkbase import FilterConfig
from eventsinkd.sinkconfig import SinkConfig
from eventsinkd.state.letterwriter import DeadLetterWriter
from eventsinkd.transports import Attempt, make_transport
from eventsinkd.wal.entry import Entry

log = logging.getLogger(__name__)


class Sink:
    def __init__(
        self,
        cfg: SinkConfig,
        events: EventsConfig,
        metrics: Metrics,
        on_finish: Callable[[Event], None] | None = None,
        *,
        dead_letters: DeadLetterWriter | None = None,
        rng: random.Random | None = None,
        stats: SinkStats | None = None,
        predecessor: Sink | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.max_inflight = events.max_inflight
        self.backoff = events.backoff_for(cfg)
        self.retry_after_max = events.retry_after_max_seconds
        # A sink reconfigured by a reload shares its predecessor's figures, as the
        # Prometheus counters of the same name do.
        self.stats = stats if stats is not None else SinkStats()
        self.inflight = 0  # accepted and not finished: queued, in flight, parked or waiting
        self.pause = Pause(self, events.pause_after_failures)
        self.transport = make_transport(cfg, metrics)
        self.requests = Requests(self)
        self._filter = EventFilter(cfg.filter) if cfg.filter != FilterConfig() else None
        self._on_finish = on_finish
        self.rng = rng or random.Random()
        self.ordered = cfg.wal_order
        self.order_key = cfg.order_key  # the entry field the cursor gives as each event's key
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self.retries = Retries(self, dead_letters, self._queue.put_nowait)
        self._order: SinkOrder | None = None
        if self.order_key is not None:
            before = predecessor._order if predecessor is not None else None
            self._order = SinkOrder(self._queue.put_nowait, before)
        bucket = self.requests.bucket
        self.workers = Workers(
            self.name,
            self._queue,
            self._deliver,
            # 1, or the sink's max_batch (no more than the rate limit's burst)
            batch_size=min(self.transport.max_batch, bucket.batch_cap if bucket else 10**9),
            linger_s=cfg.linger_s,
            closed=lambda: self.closed,
        )
        self._held: set[Job] = set()  # everything counted in inflight
        self._left = 0  # given back unfinished at shutdown (their last try failed)
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = asyncio.Event()
        self._abort = asyncio.Event()
        self._stop_task: asyncio.Task[int] | None = None
        self.successor: Sink | None = None
        self.rlog = RateLimitedLog(log)
        self.metrics = SinkMetrics(metrics, self.name)
        # Read at scrape time rather than updated per event (the per-event cost shows in
        # profiles). A reloaded sink of the same name takes the callbacks over.
        self.metrics.watch(
            queue_depth=lambda: self.inflight,
            last_success=lambda: self.stats.last_success or 0.0,
            last_failure=lambda: self.stats.last_failure or 0.0,
            paused=lambda: 1.0 if self.paused else 0.0,
            concurrency=lambda: self.requests.limit,
        )

    @property
    def batch_size(self) -> int:
        return self.workers.batch_size

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.transport.open()
        self.workers.resize(self.requests.limit)

    async def stop(self, timeout_s: float, *, successor: Sink | None = None) -> int:
        """Stop taking events; try each one still held once, for up to ``timeout_s``.

        What is left after that - the last try failed, or time ran out - is
        counted as dropped and logged, and stays unfinished: block mode's cursor
        does not pass it, so it is read again after a restart. Returns how many
        were left. Safe to call more than once. With a ``successor`` (the same
        sink, reconfigured by a reload) nothing is left: queued events move to it
        at once, and in-flight ones that do not get through follow them. A paused
        sink's receiver is down: its events get no last try.
        """
        if self._stop_task is None:
            self.successor = successor
            self._stop_task = asyncio.create_task(self._stop(timeout_s))
        return await asyncio.shield(self._stop_task)

    async def _stop(self, timeout_s: float) -> int:
        self.draining.set()
        self._room.set()  # a cursor waiting for room finds the sink closed instead
        paused = self.paused
        waiting = self.pause.stop()
        for job in self.retries.unpark_all():
            self._queue.put_nowait(job)
        if self.successor is not None:
            for job in waiting:
                self.hand_over(job)
            while not self._queue.empty():
                self.hand_over(self._queue.get_nowait())
        if not paused:
            idle = asyncio.create_task(self._idle.wait())
            abort = asyncio.create_task(self._abort.wait())
            await asyncio.wait(
                {idle, abort}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            idle.cancel()
            abort.cancel()
        await self.workers.stop()
        if self.successor is not None:
            for job in list(self._held):  # cut off in flight: the successor tries again
                if job in self._held and not job.waiting:  # those waiting follow theirs
                    self.hand_over(job)
        left = self.inflight + self._left
        if left:
            self.stats.dropped += left
            self.metrics.dropped.inc(left)
            log.warning(
                "sink %s: %d event(s) left undelivered at shutdown, counted as dropped",
                self.name,
                left,
            )
        self.inflight = 0
        self._held.clear()
        if self._order is not None:
            self._order.close()
        await self.transport.close()
        return left

    def hand_over(self, job: Job) -> None:
        """Hand ``job`` to the successor; it stays unfinished (block mode keeps waiting for it).
        Events of its key waiting behind it follow it (see :meth:`_release`)."""
        assert self.successor is not None
        self.successor._adopt(job, older=True)
        self._release(job)

    def _adopt(self, job: Job, *, older: bool = False) -> None:
        self.inflight += 1
        self._idle.clear()
        self._held.add(job)
        if self._order is None or job.key is None or self._order.admit(job, older=older):
            self._queue.put_nowait(job)

    def abort(self) -> None:
        """End a running :meth:`stop` now, as if its timeout had passed."""
        self._abort.set()

    async def wait_idle(self) -> None:
        """Wait until every event this sink holds is finished."""
        await self._idle.wait()

    # -- taking events -------------------------------------------------------------

    def accepts(self, kind: str, entry: Entry) -> bool:
        return self._filter is None or self._filter.matches(kind, entry)

    @property
    def paused(self) -> bool:
        return self.pause.active

    @property
    def paused_since(self) -> float | None:
        return self.pause.since

    @property
    def closed(self) -> bool:
        """True once the sink stops taking events (shutdown, or replaced by a reload)."""
        return self.draining.is_set()

    @property
    def has_room(self) -> bool:
        return self.inflight < self.max_inflight and not self.closed

    def offer(self, event: Event, key: str | None = None) -> bool:
        """Drop mode: queue ``event`` if there is room, else drop and count it. Never waits.

        ``key``: with order per key, the value of the entry's ``order_key`` field."""
        if not self.has_room:
            self.drop()
            return False
        self.stats.offered += 1
        self.metrics.offered.inc()
        self._adopt(Job(event, key))
        return True

    def drop(self) -> None:
        """Count an event this sink had no room for (the warning is rate-limited)."""
        self.stats.offered += 1
        self.metrics.offered.inc()
        self.stats.dropped += 1
        self.metrics.dropped.inc()
        self.rlog.log(
            logging.WARNING,
            "drop",
            "sink %s: queue full (%d events), dropping events",
            self.name,
            self.max_inflight,
        )

    async def put(self, event: Event, key: str | None = None) -> bool:
        """Block mode: wait for room (and for a pause to end), then queue ``event``.

        False when the sink closed meanwhile: the caller hands the event to
        whatever replaced it, or leaves it to be read again after a restart.
        """
        # Paused, it takes nothing new: the events wait in the WAL, not in memory.
        while not self.put_nowait(event, key):
            if self.closed:
                return False
            self._room.clear()
            await self._room.wait()
        return True

    def put_nowait(self, event: Event, key: str | None = None) -> bool:
        """Block mode: queue ``event`` if the sink takes it now (not paused, room); False
        otherwise, and the caller waits with :meth:`put` (most events need no wait, and a
        call costs less than a coroutine)."""
        if self.paused or not self.has_room:
            return False
        # Counted once it is held, so offered = delivered + failed + dropped + queue depth.
        self.stats.offered += 1
        self.metrics.offered.inc()
        self._adopt(Job(event, key))
        return True

    def finish(self, job: Job, outcome: Literal["delivered", "failed"]) -> None:
        """``job`` is done with: delivered, or given up on (and kept as a dead letter)."""
        now = time.time()
        if outcome == "delivered":
            self.stats.delivered += 1
            self.metrics.delivered.inc()
            self.stats.last_success = now
            wal_time = job.event.wal_time
            if wal_time is not None:
                self.metrics.latency.observe(max(0.0, now - wal_time))
        else:
            self.stats.failed += 1
            self.metrics.failed.inc()
        self._release(job)
        if self._on_finish is not None:
            self._on_finish(job.event)

    def _release(self, job: Job, *, chain: bool = True) -> None:
        self._held.discard(job)
        self.inflight -= 1
        if chain and self._order is not None and job.key is not None:
            # The next event of its key goes out, or, handed over, the rest follow it.
            nxt = self._order.done(job)
            while nxt is not None and self.successor is not None and self.draining.is_set():
                self.successor._adopt(nxt, older=True)
                self._release(nxt, chain=False)
                nxt = self._order.done(nxt)
            if nxt is not None:
                self._queue.put_nowait(nxt)
        if self.inflight < self.max_inflight:
            self._room.set()
        if self.inflight == 0:
            self._idle.set()

    def leave_unfinished(self, job: Job) -> None:
        """Its last try at shutdown failed: it stays unfinished (read again after a restart), and
        so do the events of its key behind it, which must not overtake it."""
        behind = self._order.behind(job) if self._order and job.key is not None else []
        for left in (job, *behind):
            self._left += 1
            self._release(left, chain=False)

    # -- delivering ----------------------------------------------------------------

    async def _deliver(self, jobs: list[Job]) -> None:
        while jobs:
            try:
                await self._send(jobs)
                return
            except Exception:
                # A bug of eventsinkd's, not trouble with the receiver: the worker must
                # carry on, and the events it held be tried again, not held for ever
                # (block mode's cursor would never pass them).
                delay = self.backoff[-1]
                self.rlog.log(
                    logging.ERROR,
                    "bug",
                    "sink %s: delivering %d event(s) failed unexpectedly; trying again in %ss",
                    self.name,
                    len(jobs),
                    delay,
                    exc_info=True,
                )
                waiting = self.pause.waiting
                jobs = [
                    j
                    for j in jobs
                    if j in self._held and j not in self.retries.parked and j not in waiting
                ]
            if self.draining.is_set():
                return  # held, so left unfinished at shutdown (block mode reads them again)
            if not self.ordered:
                for job in jobs:
                    self.retries.park(job, delay)
                return
            # WAL order: the one worker tries them again itself, as it does a retry.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.draining.wait(), delay)

    async def _send(self, jobs: list[Job]) -> None:
        while jobs:
            if self.paused:
                self.pause.waiting.extend(jobs)  # the probe takes them from there
                return
            results = await self.requests.send([job.event for job in jobs])
            failed = []
            for job, result in zip(jobs, results, strict=True):
                if result.outcome is Outcome.DELIVERED:
                    self.finish(job, "delivered")
                else:
                    failed.append((job, result))
            if not failed:
                return
            if self.paused:
                # In flight when the sink paused: these attempts do not count.
                self.pause.waiting.extend(job for job, _ in failed)
                return
            jobs = await self.retries.failed(failed)

    def resume(self, held: list[Job]) -> None:
        """The pause is over: ``held`` goes out again, oldest first, and new events come in."""
        # Then anything queued since the workers last looked (drop mode keeps queueing).
        while not self._queue.empty():
            held.append(self._queue.get_nowait())
        for job in held:
            self._queue.put_nowait(job)
        self._room.set()

    async def send_one(self, event: Event) -> Attempt:
        """One attempt for one event, beside the workers (a probe, a dead letter's replay)."""
        return (await self.requests.send([event], worker=False))[0]
