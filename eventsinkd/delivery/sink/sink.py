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
(:mod:`eventsinkd.delivery.requests`). With order per key
(:mod:`eventsinkd.delivery.keyorder`), an event goes out only once the one
before it of the same key is finished.

What becomes of a failed event - a retry after its backoff, a dead letter, or a
pause - is decided by the retry policy (:mod:`eventsinkd.delivery.policy`) and done
here. A receiver that keeps failing *pauses* the sink (:mod:`eventsinkd.delivery.pause`);
paused, it takes no new events in block mode (they wait in the WAL; in drop mode
the queue still fills to ``max_inflight``, as Nexus's does). A retry waits out its
backoff parked on a timer, not occupying a worker; in WAL order the one worker waits
instead, since order matters more. A dead letter that cannot be stored is not
finished, and is tried again later. At shutdown a failed event gets no retry: it goes
to the sink's successor (a reload) or is left unfinished, read again after a restart.

Everything the sink holds, and its counts, is kept by its ledger
(:mod:`eventsinkd.delivery.sink.ledger`); the sink is the only one that changes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Literal

from eventsinkd.config.model import EventsConfig
from eventsinkd.config.options import FilterConfig
from eventsinkd.config.sinks import SinkConfig
from eventsinkd.delivery.filters import EventFilter
from eventsinkd.delivery.job import Job, SinkStats
from eventsinkd.delivery.keyorder import SinkOrder
from eventsinkd.delivery.policy import RetryPolicy
from eventsinkd.delivery.replay import apply_transform, shape_for_replay
from eventsinkd.delivery.requests import Requests
from eventsinkd.delivery.sink.delivery import Delivery
from eventsinkd.delivery.sink.ledger import Ledger
from eventsinkd.delivery.workers import Workers
from eventsinkd.events import Event
from eventsinkd.metrics import Metrics, SinkMetrics
from eventsinkd.state.letterwriter import DeadLetterWriter
from eventsinkd.transports import make_transport
from eventsinkd.transports.contract import Attempt, Transport
from eventsinkd.wal.entry import Entry

log = logging.getLogger("eventsinkd.delivery.sink")


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
        self.policy = RetryPolicy(
            backoff=events.backoff_for(cfg),
            retry_after_max_s=events.retry_after_max_seconds,
            max_retries=cfg.max_retries,
            pause_after_failures=events.pause_after_failures,
            rng=rng,
        )
        self.ordered = cfg.wal_order
        self.order_key = cfg.order_key  # the entry field the cursor gives as each event's key
        self.metrics = SinkMetrics(metrics, self.name)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        order: SinkOrder | None = None
        if self.order_key is not None:
            before = predecessor._order if predecessor is not None else None
            order = SinkOrder(self._queue.put_nowait, before)
        self._order: SinkOrder | None = order
        self.ledger = Ledger(
            events.max_inflight,
            stats if stats is not None else SinkStats(),
            self.metrics,
            order,
            self._queue,
        )
        self.draining = asyncio.Event()
        self._abort = asyncio.Event()
        self._stop_task: asyncio.Task[int] | None = None
        self.successor: Sink | None = None
        self._predecessor = predecessor  # until its stop has handed everything over
        self.workers: Workers  # made below, once what it calls exists
        self.requests = Requests(
            self.name,
            make_transport(cfg, metrics.truncated.labels(cfg.name)),
            self.metrics,
            max_requests=cfg.max_requests,
            adaptive=cfg.adaptive,
            rate_limit=cfg.rate_limit,
            on_resize=lambda n: self.workers.resize(n),
        )
        self.delivery = Delivery(
            self.name,
            self.ledger,
            self.policy,
            self.requests,
            ordered=self.ordered,
            content=cfg.content,
            retries_metric=self.metrics.retries,
            dead_letters=dead_letters,
            # looked up at each call: a test makes it fail once
            finish=lambda job, outcome: self.finish(job, outcome),
            hand_over=self._hand_over,
            successor=lambda: self.successor,
            draining=self.draining,
        )
        self.pause = self.delivery.pause
        self._transform = cfg.transformer
        self.delivery.shaping = self._transform is not None
        self._filter = EventFilter(cfg.filter) if cfg.filter != FilterConfig() else None
        self._on_finish = on_finish
        bucket = self.requests.bucket
        max_batch = self.requests.transport.max_batch
        self.workers = Workers(
            self.name,
            self._queue,
            self.delivery.deliver,
            # 1, or the sink's max_batch (no more than the rate limit's burst)
            batch_size=min(max_batch, bucket.batch_cap if bucket else 10**9),
            linger_s=cfg.linger_s,
            closed=lambda: self.closed,
        )
        self.rlog = self.delivery.rlog
        # Read at scrape time rather than updated per event (the per-event cost shows in
        # profiles). A reloaded sink of the same name takes the callbacks over.
        self.metrics.watch(
            queue_depth=lambda: self.inflight,
            last_success=lambda: self.stats.last_success or 0.0,
            last_failure=lambda: self.stats.last_failure or 0.0,
            paused=lambda: 1.0 if self.paused else 0.0,
            concurrency=lambda: self.requests.limit,
        )

    # -- what /status and the cursor read ----------------------------------------------

    @property
    def stats(self) -> SinkStats:
        return self.ledger.stats

    @property
    def inflight(self) -> int:
        """Events held: queued, in flight, parked, waiting out a pause or behind their key."""
        return self.ledger.inflight

    @property
    def transport(self) -> Transport:
        return self.requests.transport

    @transport.setter
    def transport(self, transport: Transport) -> None:  # tests put a scripted one in
        self.requests.transport = transport

    @property
    def batch_size(self) -> int:
        return self.workers.batch_size

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
        return self.ledger.has_room and not self.closed

    def rate_limit_status(self) -> dict[str, float] | None:
        return self.requests.rate_limit_status(time.monotonic())

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
        ledger = self.ledger
        self.draining.set()
        successor = self.successor
        if successor is not None:  # a released key's next events follow it
            ledger.successor = lambda job: successor._adopt(job, older=True)
        ledger.room.set()  # a cursor waiting for room finds the sink closed instead
        paused = self.paused
        self.pause.stop()
        ledger.unpark_all()  # each gets one more try now, or goes to the successor
        if successor is not None:
            for job in ledger.take_all():
                self._hand_over(job)
        if not paused:
            idle = asyncio.create_task(ledger.idle.wait())
            abort = asyncio.create_task(self._abort.wait())
            await asyncio.wait(
                {idle, abort}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            idle.cancel()
            abort.cancel()
        await self.workers.stop()
        predecessor = self._predecessor
        if predecessor is not None:
            # Reloaded just before: what it hands over yet is this sink's to pass on or count.
            await predecessor.stop(timeout_s)
        if successor is not None:
            for job in ledger.in_hand():  # cut off in flight: the successor tries again
                if ledger.holds(job) and not job.waiting:  # those waiting follow theirs
                    self._hand_over(job)
        left = ledger.close()
        if successor is not None:
            successor._predecessor = None
        if left:
            log.warning(
                "sink %s: %d event(s) left undelivered at shutdown, counted as dropped",
                self.name,
                left,
            )
        await self.transport.close()
        return left

    def _hand_over(self, job: Job) -> None:
        """Hand ``job`` to the successor; it stays unfinished (block mode keeps waiting for it).
        Events of its key waiting behind it follow it."""
        assert self.successor is not None
        self.successor._adopt(job, older=True)
        self.ledger.release(job)

    def _adopt(self, job: Job, *, older: bool = False) -> None:
        self.ledger.adopt(job, older=older)

    def abort(self) -> None:
        """End a running :meth:`stop` now, as if its timeout had passed."""
        self._abort.set()

    async def wait_idle(self) -> None:
        """Wait until every event this sink holds is finished."""
        await self.ledger.idle.wait()

    # -- taking events -------------------------------------------------------------

    def accepts(self, kind: str, entry: Entry) -> bool:
        return self._filter is None or self._filter.matches(kind, entry)

    def offer(self, event: Event, key: str | None = None) -> bool:
        """Drop mode: queue ``event`` if there is room, else drop and count it. Never waits.

        ``key``: with order per key, the value of the entry's ``order_key`` field."""
        if not self.has_room:
            self.drop()
            return False
        self.ledger.offered()
        job = Job(event, key)
        if self._transform is None or self._shape(job):
            self.ledger.adopt(job)
        return True

    def drop(self) -> None:
        """Count an event this sink had no room for (the warning is rate-limited)."""
        self.ledger.offered()
        self.ledger.dropped()
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
        room = self.ledger.room
        while not self.put_nowait(event, key):
            if self.closed:
                return False
            room.clear()
            await room.wait()
        return True

    def put_nowait(self, event: Event, key: str | None = None) -> bool:
        """Block mode: queue ``event`` if the sink takes it now (not paused, room); False
        otherwise, and the caller waits with :meth:`put` (most events need no wait, and a
        call costs less than a coroutine)."""
        if self.paused or not self.has_room:
            return False
        self.ledger.offered()  # counted once it is held
        job = Job(event, key)
        if self._transform is None or self._shape(job):
            self.ledger.adopt(job)
        return True

    def _shape(self, job: Job) -> bool:
        """Apply the sink's transform to ``job``'s event as it is taken: False when it says
        not to send it (counted as filtered and finished, so block mode's cursor moves past
        it). A program that fails on it leaves the job a ``problem``: the delivery makes it a
        dead letter, never a crash of the reader."""
        event = job.event
        assert self._transform is not None
        shaped = apply_transform(self._transform, self.cfg.content, event)
        if isinstance(shaped, str):
            job.problem = shaped
            return True
        if shaped is None:
            self.ledger.filtered()
            if self._on_finish is not None:
                self._on_finish(event)
            return False
        event.shaped = shaped
        return True

    def finish(self, job: Job, outcome: Literal["delivered", "failed"]) -> None:
        """``job`` is done with: delivered, or given up on (and kept as a dead letter)."""
        self.ledger.finish(job, outcome)
        if self._on_finish is not None:
            self._on_finish(job.event)

    async def send_one(self, event: Event) -> Attempt:
        """One attempt for one event, beside the workers (a dead letter's replay, through
        the sink's current transform: one that filters it out counts as delivered)."""
        done = shape_for_replay(self._transform, self.cfg.content, event)
        if done is not None:
            return done
        return await self.delivery.send_one(event)
