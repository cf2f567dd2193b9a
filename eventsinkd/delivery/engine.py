"""The engine: every sink with its cursor, started, reloaded and stopped together.

Each sink reads the WAL through its own cursor (:mod:`eventsinkd.delivery.cursor`);
the engine only creates them, applies reloads and stops them in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from eventsinkd.config.model import RESTART, SINKS, EventsConfig, keys_marked
from eventsinkd.config.rotation import files_digest
from eventsinkd.config.sinks import SinkConfig
from eventsinkd.delivery.cursor import SinkCursor, finish_ticket
from eventsinkd.delivery.sink import Sink
from eventsinkd.metrics import Metrics
from eventsinkd.state.letterwriter import DeadLetterWriter
from eventsinkd.state.positions import Checkpointer, NoUsableCursor
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import SharedReading
from eventsinkd.wal.scanner import StartAt

log = logging.getLogger(__name__)

# Where a sink starts: its saved cursor, else its own start_at, else wal.start_at.
StartFor = Callable[[SinkConfig], Position | StartAt]
CheckpointsFor = Callable[[str], Checkpointer]


class Engine:
    def __init__(
        self,
        cfg: EventsConfig,
        metrics: Metrics,
        checkpoints_for: CheckpointsFor,
        *,
        start_for: StartFor = lambda _sink: "end",
        dead_letters: DeadLetterWriter | None = None,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.block = cfg.overflow == "block"
        self._checkpoints_for = checkpoints_for
        self._start_for = start_for
        self._dead_letters = dead_letters
        self._on_failure = on_failure
        # Per sink, the digest of the files its secrets and certificates were read from.
        self._files: dict[str, str] = {}
        self.cursors: dict[str, SinkCursor] = {s.name: self._cursor(s, cfg) for s in cfg.sinks}
        self.reading: SharedReading | None = None
        self._stopped = False
        self._retiring: dict[asyncio.Task[int], Sink] = {}
        self._removing: dict[str, asyncio.Task[int]] = {}  # removed sinks still draining

    def _sink(self, sc: SinkConfig, cfg: EventsConfig, old: Sink | None = None) -> Sink:
        self._files[sc.name] = files_digest(sc)
        return Sink(
            sc,
            cfg,
            self.metrics,
            finish_ticket,
            dead_letters=self._dead_letters,
            stats=old.stats if old is not None else None,
            predecessor=old,
        )

    def _cursor(self, sc: SinkConfig, cfg: EventsConfig) -> SinkCursor:
        return SinkCursor(
            self._sink(sc, cfg),
            self._checkpoints_for(sc.name),
            block=self.block,
            started_at=self._start_for(sc),
            types=frozenset(cfg.types),
            pending_limit=cfg.pending_limit,
            on_failure=self._on_failure,
        )

    @property
    def sinks(self) -> dict[str, Sink]:
        return {name: c.sink for name, c in self.cursors.items()}

    async def start(self) -> None:
        """Open every sink's transport and start its workers (no reading yet), all at once:
        a receiver that is down delays the start by one connect timeout, not one per sink."""
        await asyncio.gather(*(cursor.sink.start() for cursor in self.cursors.values()))

    def follow(self, reading: SharedReading) -> None:
        """Start every cursor reading the WAL."""
        self.reading = reading
        for cursor in self.cursors.values():
            cursor.follow(reading)

    async def wait_idle(self) -> None:
        """Wait until every sink has finished every event it holds."""
        await asyncio.gather(*(c.sink.wait_idle() for c in self.cursors.values()))

    def _same_settings(self, new: EventsConfig) -> bool:
        """Whether ``new`` keeps every setting each sink is built with."""
        return all(
            getattr(self.cfg, k) == getattr(new, k) for k in keys_marked(EventsConfig, SINKS)
        )

    async def reconfigure(self, cfg: EventsConfig) -> list[str]:
        """Apply a reloaded sink list. Returns what changed.

        An unchanged sink keeps running untouched. A changed one hands its events
        to its successor and keeps its cursor. A removed one stops reading,
        drains, and leaves its saved cursor behind: re-adding the same name
        resumes there (a sink re-added while it still drains waits for that, so
        its cursor is final). An added one starts at its saved cursor if it has
        one, else at its ``start_at``, else at ``wal.start_at`` (in block mode one whose
        saved cursor cannot be used is not added: see :mod:`eventsinkd.state.cursors`).
        The keys marked RESTART in the model (``overflow``, ``types``, ``pending_limit``)
        are fixed for the life of the engine; the caller keeps them unchanged
        (:meth:`eventsinkd.config.Config.reloaded`).
        """
        fixed = keys_marked(EventsConfig, RESTART)
        assert all(getattr(self.cfg, k) == getattr(cfg, k) for k in fixed), fixed
        keep_all = self._same_settings(cfg)
        changes = []
        wanted = {sc.name: sc for sc in cfg.sinks}
        for name in [n for n in self.cursors if n not in wanted]:
            cursor = self.cursors.pop(name)
            changes.append(f"removed sink {name}")
            self._removing[name] = self._retire(
                self._remove(cursor, cfg.shutdown_timeout_s), cursor.sink
            )
        for sc in cfg.sinks:
            existing = self.cursors.get(sc.name)
            if existing is None:
                draining = self._removing.pop(sc.name, None)
                if draining is not None:
                    await asyncio.shield(draining)
                try:
                    added = self._cursor(sc, cfg)
                except NoUsableCursor as exc:
                    log.error("%s", exc)
                    changes.append(f"sink {sc.name} NOT added (no usable cursor)")
                    continue
                await added.sink.start()
                self.cursors[sc.name] = added
                if self.reading is not None:
                    added.follow(self.reading)
                changes.append(f"added sink {sc.name}")
                continue
            cursor = existing
            same = keep_all and cursor.sink.cfg == sc
            rotated = files_digest(sc) != self._files.get(sc.name)
            if same and not rotated:
                continue
            old = cursor.sink
            new = self._sink(sc, cfg, old)
            await new.start()
            cursor.sink = new
            why = " (its secret, certificate or key files changed)" if same else ""
            changes.append(f"changed sink {sc.name}{why}")
            self._retire(old.stop(cfg.shutdown_timeout_s, successor=new), old)
        self.cfg = cfg
        return changes

    async def _remove(self, cursor: SinkCursor, timeout_s: float) -> int:
        await cursor.stop_reading()
        left = await cursor.sink.stop(timeout_s)
        cursor.checkpoints.flush()
        return left

    def _retire(self, stopping: Coroutine[Any, Any, int], sink: Sink) -> asyncio.Task[int]:
        task = asyncio.ensure_future(stopping)
        self._retiring[task] = sink
        task.add_done_callback(self._retiring.pop)
        return task

    async def rewind(self, name: str, to: Position) -> None:
        cursor = self.cursors[name]
        assert self.reading is not None
        await cursor.rewind(to, self.reading)

    def flush(self) -> None:
        """Save every cursor's acknowledged position that moved."""
        for cursor in self.cursors.values():
            cursor.checkpoints.flush()

    def abort(self) -> None:
        """Cut a running :meth:`stop` short: what is still held is left, counted and logged."""
        for sink in [*(c.sink for c in self.cursors.values()), *self._retiring.values()]:
            sink.abort()

    async def stop_reading(self) -> None:
        await asyncio.gather(*(c.stop_reading() for c in self.cursors.values()))

    async def stop(self, timeout_s: float) -> int:
        """Stop reading, drain every sink within ``timeout_s``, save the cursors.

        Returns the number of events left undelivered.
        """
        await self.stop_reading()
        sinks = [c.sink for c in self.cursors.values()]
        left = await asyncio.gather(*(s.stop(timeout_s) for s in sinks), *self._retiring)
        self.flush()
        total = sum(left)
        if not self._stopped and total:
            log.warning("%d event(s) left undelivered at shutdown", total)
        self._stopped = True
        return total
