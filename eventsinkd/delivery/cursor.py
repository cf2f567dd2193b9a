"""A sink's cursor: its own way through the WAL, its saved position, and its sink.

The WAL is the queue. Each sink reads it through its own scanner and saves its
own position, so a sink that is slow or down falls behind alone, holding at
most ``max_inflight`` events, and catches up from the WAL later.

``overflow: drop`` - handing over never waits; the position is acknowledged as
soon as a batch is handed over, and what the sink has no room for is dropped
and counted (a sink never falls more than ``max_inflight`` events behind).
``overflow: block`` - handing over waits for room, and the position only moves
across events the sink has finished (delivered, or kept as a dead letter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
from collections.abc import Callable

from eventsinkd.delivery.acks import AckTracker, Ticket
from eventsinkd.delivery.sink import Sink
from eventsinkd.events import MEMORY_WRITTEN, STATUS_EVENTS, Event, event_type, status_event_type
from eventsinkd.metrics import Lag, lag_seconds
from eventsinkd.state.positions import Checkpointer
from eventsinkd.wal.batches import Batch
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import SharedReading
from eventsinkd.wal.scanner import StartAt
from eventsinkd.wal.statuses import StatusChange, StatusWatch

log = logging.getLogger(__name__)

STOP_READING_S = 1.0  # how long a cursor waiting for room may take to notice a stop


def _no_key(_entry: Entry) -> None:
    return None


def _key_of(sink: Sink) -> Callable[[Entry], str | None]:
    """How the cursor gets each event's key for ``sink``'s order per key (None: no key)."""
    field = sink.order_key
    return operator.attrgetter(field) if field is not None else _no_key


class StatusTicket:
    """A status event's acknowledgement handle (block mode): finished, it is not sent again."""

    __slots__ = ("change", "watch")

    def __init__(self, watch: StatusWatch, change: StatusChange) -> None:
        self.watch = watch
        self.change = change


def finish_ticket(event: Event) -> None:
    """The sinks' ``on_finish``: a finished event moves its cursor's position (block mode),
    or lets the cursor forget a status event."""
    ticket = event.ticket
    if isinstance(ticket, Ticket):
        ticket.tracker.done(ticket)
    elif isinstance(ticket, StatusTicket):
        ticket.watch.finished(ticket.change)


class SinkCursor:
    def __init__(
        self,
        sink: Sink,
        checkpoints: Checkpointer,
        *,
        block: bool,
        started_at: Position | StartAt,
        types: frozenset[str] = frozenset({MEMORY_WRITTEN}),
        pending_limit: int = 100_000,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.checkpoints = checkpoints
        self.block = block
        self.start: Position | StartAt = started_at
        self.tracker = AckTracker(checkpoints.ack) if block else None
        self.follower: WalFollower | None = None
        self.types = types  # the event types produced (events.types)
        self.written = MEMORY_WRITTEN in types
        # The PENDING entries this cursor read, followed for their status events.
        self.statuses: StatusWatch | None = None
        if types - {MEMORY_WRITTEN}:
            self.statuses = StatusWatch(self._wants_status, pending_limit)
            self._restore_statuses()
            checkpoints.statuses = self.statuses
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None

    # -- handing events over ------------------------------------------------------

    async def handle(self, batch: Batch) -> None:
        """Hand the events of ``batch`` this sink wants to it; in block mode wait for room.

        The batch is this cursor's own: block mode empties its records once they are
        rendered, so decoded entries are not held while the cursor waits.
        """
        if self.block:
            await self._handle_blocking(batch)
            return
        sink = self.sink
        key_of = _key_of(sink)
        for rec in batch.records if self.written else ():
            kind = event_type(rec.entry)
            if kind is None or not sink.accepts(kind, rec.entry):
                continue
            if sink.has_room:
                sink.offer(Event(kind, rec.entry, (sink.cfg.content,)), key_of(rec.entry))
            else:
                sink.drop()  # a flood against a full sink renders no bodies
        for change in batch.statuses:
            event = self._status_event(change)
            if event is not None:
                if sink.has_room:
                    sink.offer(event, key_of(change.entry))
                else:
                    sink.drop()
            self._finished(change)
        self.checkpoints.ack(batch.end)

    async def _handle_blocking(self, batch: Batch) -> None:
        tracker = self.tracker
        assert tracker is not None
        if self.checkpoints.acked is None and self.follower is not None:
            # Where reading began is finished: saved from the first batch on, a restart
            # before any event is finished resumes there, not at a later ``start_at: end``.
            began = self.follower.scanner.began
            if began is not None:
                self.checkpoints.ack(began)
        sink = self.sink
        key_of = _key_of(sink)
        events: list[tuple[Event, str | None]] = []
        for rec in batch.records if self.written else ():
            kind = event_type(rec.entry)
            if kind is not None and sink.accepts(kind, rec.entry):
                event = Event(kind, rec.entry, (sink.cfg.content,))
                event.ticket = tracker.track(rec.position, rec.entry.timestamp)
                events.append((event, key_of(rec.entry)))
        for change in batch.statuses:
            status = self._status_event(change)
            if status is None:
                self._finished(change)
                continue
            assert self.statuses is not None
            status.ticket = StatusTicket(self.statuses, change)
            events.append((status, key_of(change.entry)))
        # While this cursor waits for room, it holds rendered events, not decoded
        # entries (a memory's whole payload each).
        batch.records.clear()
        batch.statuses = ()
        for event, key in events:
            if self.sink.put_nowait(event, key):
                continue
            # A reload can replace the sink while we wait for room: the event goes
            # to the new one. At shutdown it stays unfinished and is read again.
            while not await self.sink.put(event, key):
                if self.sink.closed:
                    await asyncio.Event().wait()  # until the reader is cancelled
        tracker.track(batch.end, finished=True)

    # -- status events ----------------------------------------------------------------

    def _wants_status(self, entry: Entry) -> bool:
        """Whether this sink takes a status event for ``entry`` (its PENDING entries that
        it does not are not followed)."""
        sink = self.sink
        return any(k in self.types and sink.accepts(k, entry) for k in STATUS_EVENTS.values())

    def _status_event(self, change: StatusChange) -> Event | None:
        kind = status_event_type(change.entry)
        if kind is None or kind not in self.types or not self.sink.accepts(kind, change.entry):
            return None
        return Event(kind, change.entry, (self.sink.cfg.content,))

    def _finished(self, change: StatusChange) -> None:
        if self.statuses is not None:
            self.statuses.finished(change)

    def _restore_statuses(self) -> None:
        """Take the PENDING entries saved with the cursor (once, before reading)."""
        store = self.checkpoints.store
        if self.statuses is None or store is None or store.statuses is None:
            return
        try:
            self.statuses.restore(store.statuses)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            log.error(
                "sink %s: the PENDING entries saved in %s cannot be used (%s); those read "
                "before this start give no status events",
                self.name,
                store.path,
                exc,
            )

    # -- reading --------------------------------------------------------------------

    def follow(self, reading: SharedReading, *, batch_lines: int = 256) -> None:
        """Start reading the WAL from ``start`` (the saved position or ``start_at``)."""
        self.follower = WalFollower(
            reading.wal_dir,
            reading.parser,
            self.start,
            reading=reading,
            batch_lines=batch_lines,
            statuses=self.statuses,
        )
        self._task = asyncio.create_task(self._read(self.follower), name=f"cursor-{self.name}")

    async def _read(self, follower: WalFollower) -> None:
        try:
            async for batch in follower:
                await self.handle(batch)
        except Exception as exc:
            if self._on_failure is not None:
                self._on_failure(self.name, exc)
            raise

    @property
    def reading(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop_reading(self) -> None:
        """Stop reading. In block mode what was not handed over is read again after a restart."""
        if self.follower is not None:
            self.follower.stop()
        if self._task is None:
            return
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), STOP_READING_S)
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def rewind(self, to: Position, reading: SharedReading) -> None:
        """Move the cursor to ``to`` and read on from there (events held now still go out)."""
        await self.stop_reading()
        if self.tracker is not None:
            self.tracker.close()  # tickets still held must not move the new position
            self.tracker = AckTracker(self.checkpoints.ack)
        self.checkpoints.acked = to
        self.checkpoints.flush()
        self.start = to
        log.info("sink %s: cursor rewound to %s", self.name, to)
        self.follow(reading)

    # -- figures ----------------------------------------------------------------------

    @property
    def read_position(self) -> Position | None:
        return self.follower.position if self.follower is not None else None

    def lag(self) -> Lag:
        scanner = self.follower.scanner if self.follower is not None else None
        behind = self.follower.backlog_bytes() if self.follower is not None else 0
        held = self.sink.inflight
        oldest = self.tracker.oldest_unfinished if self.tracker is not None else None
        if oldest is not None:
            seconds = lag_seconds(oldest.timestamp)
        elif behind and scanner is not None:
            seconds = lag_seconds(scanner.last_timestamp)
        else:
            seconds = 0.0
        unread = 0
        if behind and scanner is not None and scanner.stats.lines:
            # Not read yet, so not counted: estimated from the mean line size seen.
            unread = round(behind / max(1.0, scanner.mean_line_bytes))
        return Lag(held + unread, behind, seconds)

    def state(self) -> str:
        if self.sink.paused:
            return "paused"
        scanner = self.follower.scanner if self.follower is not None else None
        if scanner is not None and not scanner.at_end:
            return "catching_up"
        return "running"
