"""Moving a sink's cursor by the operator's word (``eventsinkd rewind``), and its one rule.

A cursor never moves **forward** past events its sink has not finished unless the
operator says so (``--forward``): a move that would skip some is refused with how
many. They are counted by reading the WAL between the two positions with the
sinks' own reader (:func:`eventsinkd.wal.seek.count_between`): the memory entries
(each a ``memory_written`` event) that the sink's filter takes. The status events
those entries would have made later are not counted. A cursor that cannot be used
at all (see :mod:`eventsinkd.state.cursors`) has no position to be ahead of:
any move is allowed, and is the way to choose one.

Used by the command when no daemon runs, and by the running daemon for the
requests the command leaves (:mod:`eventsinkd.state.control`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eventsinkd.config.model import Config
from eventsinkd.config.options import FilterConfig
from eventsinkd.config.sinks import SinkConfig
from eventsinkd.delivery.filters import EventFilter
from eventsinkd.state.control import RewindRequest
from eventsinkd.state.cursors import CursorFiles, in_wal
from eventsinkd.state.positions import PositionFileError
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position, describe
from eventsinkd.wal.seek import BEGINNING, count_between

if TYPE_CHECKING:
    from eventsinkd.delivery.cursor import SinkCursor
    from eventsinkd.delivery.engine import Engine

log = logging.getLogger(__name__)

FORWARD_FLAG = "--forward"
NOT_SAVED = "the end of the WAL (no saved cursor)"


def wanted_by(sink: SinkConfig, types: Iterable[str]) -> Callable[[Entry], bool]:
    """Whether ``sink`` would deliver an event for a WAL entry (its filter, any of ``types``)."""
    filt = EventFilter(sink.filter) if sink.filter != FilterConfig() else None
    kinds = tuple(types)

    def wanted(entry: Entry) -> bool:
        if not entry.is_data:
            return False
        return filt is None or any(filt.matches(kind, entry) for kind in kinds)

    return wanted


@dataclass(frozen=True)
class Move:
    sink: str
    current: Position | None  # None: no usable position to be ahead of
    to: Position
    skipped: int  # events between ``current`` and ``to`` that the sink would never deliver
    unknown: str = "an unusable cursor"  # what ``current`` None stands for, in words

    def refusal(self) -> str:
        return (
            f"sink {self.sink}: moving its cursor from {self._from()} to {describe(self.to)} "
            f"would skip {self.skipped} event(s) it has not delivered (the memory entries "
            "between the two that its filter takes). Nothing moved. To skip them, run the "
            f"command again with {FORWARD_FLAG}."
        )

    def done(self) -> str:
        what = f"cursor moved from {self._from()} to {describe(self.to)}"
        if self.skipped:
            what += f", forward: {self.skipped} event(s) skipped, never delivered"
        return f"sink {self.sink}: {what}"

    def _from(self) -> str:
        return describe(self.current) if self.current is not None else self.unknown


def plan(
    cfg: Config,
    sink: SinkConfig,
    current: Position | None,
    to: Position,
    unknown: str = "an unusable cursor",
) -> Move:
    """The move of ``sink``'s cursor from ``current`` to ``to`` (reads the WAL between)."""
    skipped = 0
    if current is not None and to.key() > current.key():
        skipped = count_between(
            cfg.wal.dir,
            LineParser(cfg.wal.mac_key_bytes),
            current,
            to,
            wanted_by(sink, cfg.events.types),
        )
    return Move(sink.name, current, to, skipped, unknown)


def saved_start(cfg: Config, sink: SinkConfig, saved: Position | None) -> Position | None:
    """Where a stopped sink resumes: its saved cursor; without one, the beginning for
    ``start_at: beginning``. None for ``end``: no move is forward from there (see
    :data:`NOT_SAVED`)."""
    if saved is not None:
        return saved
    return BEGINNING if (sink.start_at or cfg.wal.start_at) == "beginning" else None


def _position_of(cursor: SinkCursor) -> Position | None:
    """Where a running cursor stands: the position its sink has finished up to."""
    cp = cursor.checkpoints
    if cp.acked is not None:
        return cp.acked
    if cp.store is not None and cp.store.last_saved is not None:
        return cp.store.last_saved
    if isinstance(cursor.start, Position):
        return cursor.start
    if cursor.start == "beginning":
        return BEGINNING
    return cursor.read_position


async def serve(request: RewindRequest, cfg: Config, engine: Engine, files: CursorFiles) -> None:
    """Carry out a request left by ``eventsinkd rewind`` in the running daemon: move, or
    refuse a forward move it was not allowed; the answer is left for the command."""
    name, to = request.sink, request.to
    cursor = engine.cursors.get(name)
    sink = next((s for s in cfg.events.sinks if s.name == name), None)
    store = files.store(name)
    if cursor is not None:
        current = _position_of(cursor)
    else:  # not running here: its saved cursor is all there is to move
        try:
            current = store.load(in_wal(cfg.wal.dir))
        except PositionFileError:
            current = None
    move = Move(name, current, to, 0)
    if sink is not None:
        try:
            move = await asyncio.to_thread(plan, cfg, sink, current, to)
        except OSError as exc:
            request.answer({"refused": f"sink {name}: cannot read the WAL to count: {exc}"})
            return
    if not request.path.exists():  # counting took so long that the command gave up
        log.warning("sink %s: rewind request withdrawn before it was carried out", name)
        return
    if move.skipped and not request.forward:
        log.warning("%s", move.refusal())
        request.answer({"refused": move.refusal()})
        return
    if cursor is not None:
        await engine.rewind(name, to)
    else:
        cp = files.checkpoints(name)
        cp.acked = to
        if not cp.flush():
            request.answer({"refused": f"sink {name}: {store.last_error}"})
            return
        log.info("sink %s (not running): saved cursor moved to %s", name, to)
    log.info("%s", move.done())
    request.answer({"moved": move.done(), "skipped": move.skipped})
