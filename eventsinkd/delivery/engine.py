"""The engine: turns WAL batches into events and hands them to every sink that wants them.

``overflow: drop`` - handing over never waits; the reader's position is
acknowledged as soon as a batch is handed over (best effort, Nexus's behaviour).
``overflow: block`` - handing over waits for room, and the position is
acknowledged only across events every sink has finished (zero loss).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from eventsinkd.config import EventsConfig
from eventsinkd.delivery.acks import AckTracker, Ticket
from eventsinkd.delivery.sink import Sink
from eventsinkd.events import Event, event_type
from eventsinkd.metrics import Metrics
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import Batch

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self, cfg: EventsConfig, metrics: Metrics, ack: Callable[[Position], None]
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.block = cfg.overflow == "block"
        self._ack = ack
        self.tracker = AckTracker(ack)
        self.sinks: dict[str, Sink] = {
            s.name: Sink(s, cfg, metrics, self._finished) for s in cfg.sinks
        }
        self._stopped = False
        self._retiring: dict[asyncio.Task[int], Sink] = {}

    async def start(self) -> None:
        for sink in self.sinks.values():
            await sink.start()

    def _finished(self, event: Event) -> None:
        if isinstance(event.ticket, Ticket):
            self.tracker.done(event.ticket)

    async def handle(self, batch: Batch) -> None:
        """Hand every event of ``batch`` to its sinks; in block mode, wait for room."""
        sinks = list(self.sinks.values())
        for rec in batch.records:
            kind = event_type(rec.entry)
            if kind is None:
                continue
            entry = rec.entry
            targets = [s for s in sinks if s.accepts(kind, entry)]
            if not targets:
                continue  # the batch end moves the position past it
            if not self.block:
                # A flood against full sinks only counts drops: no body is rendered for them.
                open_sinks = [s for s in targets if s.has_room]
                for sink in targets:
                    if not sink.has_room:
                        sink.drop()
                if open_sinks:
                    event = Event(kind, entry, {s.cfg.content for s in open_sinks})
                    for sink in open_sinks:
                        sink.offer(event)
                continue
            event = Event(kind, entry, {s.cfg.content for s in targets})
            event.ticket = self.tracker.track(rec.position, len(targets))
            for sink in targets:
                await sink.put(event)
        if self.block:
            self.tracker.track(batch.end, 0)
        else:
            self._ack(batch.end)

    async def wait_idle(self) -> None:
        """Wait until every sink has finished every event it holds."""
        await asyncio.gather(*(s.wait_idle() for s in self.sinks.values()))

    def _same_settings(self, new: EventsConfig) -> bool:
        old = self.cfg
        return (
            old.max_inflight == new.max_inflight
            and old.retry_backoff_seconds == new.retry_backoff_seconds
            and old.retry_after_max_seconds == new.retry_after_max_seconds
        )

    async def reconfigure(self, cfg: EventsConfig) -> list[str]:
        """Apply a reloaded sink list; unchanged sinks keep their queues. Returns what changed.

        ``overflow`` is fixed for the life of the engine (it decides what the
        saved position means); the caller keeps it unchanged.
        """
        keep_all = self._same_settings(cfg)
        old, new = self.sinks, {}
        changes = []
        for sc in cfg.sinks:
            cur = old.get(sc.name)
            if cur is not None and keep_all and cur.cfg == sc:
                new[sc.name] = cur
                continue
            sink = Sink(
                sc, cfg, self.metrics, self._finished, stats=cur.stats if cur is not None else None
            )
            await sink.start()
            new[sc.name] = sink
            changes.append(f"{'changed' if cur is not None else 'added'} sink {sc.name}")
        retired = [(s, new.get(name)) for name, s in old.items() if new.get(name) is not s]
        changes += [f"removed sink {s.name}" for s, successor in retired if successor is None]
        self.sinks = new
        self.cfg = cfg
        for sink, successor in retired:
            # A changed sink hands what it holds to its successor; a removed one gets the
            # usual shutdown chance to deliver it.
            task = asyncio.create_task(
                sink.stop(cfg.shutdown_timeout_s, release=successor is None, successor=successor)
            )
            self._retiring[task] = sink
            task.add_done_callback(self._retiring.pop)
        return changes

    def abort(self) -> None:
        """Cut a running :meth:`stop` short: what is still held is left, counted and logged."""
        for sink in [*self.sinks.values(), *self._retiring.values()]:
            sink.abort()

    async def stop(self, timeout_s: float) -> int:
        """Drain every sink concurrently within ``timeout_s``; returns events left undelivered."""
        sinks = list(self.sinks.values())
        left = await asyncio.gather(*(s.stop(timeout_s) for s in sinks), *self._retiring)
        total = sum(left)
        if not self._stopped and total:
            log.warning("%d event(s) left undelivered at shutdown", total)
        self._stopped = True
        return total
