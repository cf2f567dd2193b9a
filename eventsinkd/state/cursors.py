"""Every sink's saved cursor in ``state_dir/cursors/<sink>.json``, and the upgrade to them.

A cursor that cannot be used is never silently replaced by ``start_at`` (with
``start_at: end`` that skips everything written while the daemon was stopped):

* a damaged file whose previous copy (``<sink>.json.prev``, see
  :class:`~eventsinkd.state.positions.PositionStore`) can be used: the sink resumes
  there (events sent again, none skipped), logged and shown in ``/status`` until
  a save replaces the file;
* no usable copy of a cursor that exists (damaged, written by a newer version,
  naming a segment that is not in the WAL): in block mode the daemon does not
  start (:class:`NoUsableCursor`, exit 3) and says which command chooses a
  position; in drop mode the sink starts at its ``start_at`` and says so.

Before per-sink cursors there was one saved position, ``state_dir/position.json``:
in block mode the oldest event any sink had not finished, in drop mode the
reading position. It is exactly where every sink must resume, so on the first
start after an upgrade each configured sink without a cursor takes it, the
cursors are saved, and the old file is renamed ``position.json.migrated``
(kept for reference; it is never read again). Sinks added later start at their
``start_at``. A ``position.json`` that cannot be used is the same as a cursor
that cannot be used, for every sink without a cursor of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from eventsinkd.config.model import Config
from eventsinkd.config.sinks import SinkConfig
from eventsinkd.state.errors import StateErrors
from eventsinkd.state.positions import (
    Checkpointer,
    NoUsableCursor,
    PositionFileError,
    PositionStore,
    Usable,
    cursor_file,
)
from eventsinkd.wal.position import Position, describe
from eventsinkd.wal.scanner import StartAt
from eventsinkd.wal.segments import SEGMENT_RE, list_segments

log = logging.getLogger(__name__)

MIGRATED_SUFFIX = ".migrated"


def rewind_hint(config: Path | None, sink: str) -> str:
    """The command that chooses a sink's position explicitly."""
    where = f" -c {config}" if config is not None else ""
    return f"eventsinkd rewind{where} --sink {sink} --to beginning|TIME|PAYLOAD_ID"


def in_wal(wal_dir: Path) -> Usable:
    """Refuses a position naming a segment that is not in ``wal_dir`` and that no segment
    there sorts after: reading from it would deliver nothing, silently, until Nexus
    writes past that name (if ever). A missing segment with later ones is fine (the
    reader resumes at the next one). When the WAL cannot be listed nothing is refused:
    the reader reports that and waits."""
    listed: list[str] | None = None

    def usable(pos: Position) -> str | None:
        nonlocal listed
        if not pos.segment:
            return None
        if not SEGMENT_RE.fullmatch(pos.segment):
            return f"names {pos.segment!r}, which is not a WAL segment name"
        try:
            if (wal_dir / pos.segment).exists():
                return None
            if listed is None:
                listed = list_segments(wal_dir)
        except OSError:
            return None
        if listed and listed[-1] > pos.segment:
            return None
        last = f"the last there is {listed[-1]}" if listed else "it holds no segment"
        return f"names segment {pos.segment}, which is not in the WAL {wal_dir} ({last})"

    return usable


def load_saved(
    store: PositionStore,
    otherwise: str,
    report: Callable[[str], None],
    usable: Usable | None = None,
) -> Position | None:
    """What ``store`` holds; None if nothing, or if it is unusable: then ``report`` is told
    why and ``otherwise`` (what happens instead)."""
    try:
        return store.load(usable)
    except PositionFileError as exc:
        report(f"{exc}; {otherwise}")
        return None


class CursorFiles:
    def __init__(
        self, cfg: Config, config_path: Path | None = None, errors: StateErrors | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path  # named in the command that chooses a position
        self.errors = errors  # failed saves are reported there (problems, metric, readiness)
        self._damaged: dict[str, str] = {}  # sink -> its cursor's problem, while not saved
        self._checkpoints: dict[str, Checkpointer] = {}
        self._legacy_damage: str | None = None  # why position.json cannot be used, if so
        self._starts: dict[str, Position | StartAt] = {}  # found by check(), for start_for()

    @property
    def block(self) -> bool:
        return self.cfg.events.overflow == "block"

    @property
    def problems(self) -> list[str]:
        """What was wrong with the cursor files at start, while it lasts: a sink's problem
        goes once its cursor is saved whole again."""
        return [p for sink, p in self._damaged.items() if self.store(sink).damage is not None]

    def checkpoints(self, sink: str) -> Checkpointer:
        cp = self._checkpoints.get(sink)
        if cp is None:
            store = PositionStore(self.cfg.state_dir, self.cfg.wal.dir, cursor_file(sink))
            store.errors = self.errors
            cp = self._checkpoints[sink] = Checkpointer(store, self.cfg.state_save_interval_s)
        return cp

    def store(self, sink: str) -> PositionStore:
        store = self.checkpoints(sink).store
        assert store is not None
        return store

    def store_errors(self) -> list[str]:
        """Cursors that cannot be saved now (when no StateErrors reports them)."""
        if self.errors is not None:
            return []
        return [
            cp.store.last_error
            for cp in self._checkpoints.values()
            if cp.store is not None and cp.store.last_error is not None
        ]

    def on_disk(self, sink: str) -> Position | None:
        """The position last saved (or loaded) for ``sink``: what a restart resumes from."""
        cp = self._checkpoints.get(sink)
        return cp.store.last_saved if cp is not None and cp.store is not None else None

    def check(self, sinks: list[SinkConfig]) -> list[str]:
        """Why the daemon must not start (block mode: sinks without a usable cursor), each
        with what to do; empty when every sink can start. Each sink's start is kept for
        :meth:`start_for`."""
        refusals = []
        for sink in sinks:
            try:
                self._starts[sink.name] = self._start(sink)
            except NoUsableCursor as exc:
                refusals.append(str(exc))
        return refusals

    def start_for(self, sink: SinkConfig) -> Position | StartAt:
        """The saved cursor; else the sink's ``start_at``; else ``wal.start_at``.

        Raises NoUsableCursor in block mode for a sink whose cursor exists and cannot be used.
        """
        found = self._starts.pop(sink.name, None)
        return found if found is not None else self._start(sink)

    def _start(self, sink: SinkConfig) -> Position | StartAt:
        fallback = sink.start_at or self.cfg.wal.start_at
        store = self.store(sink.name)
        self._damaged.pop(sink.name, None)
        try:
            saved = store.load(in_wal(self.cfg.wal.dir))
        except PositionFileError as exc:
            self._unusable(sink.name, store, str(exc), fallback)
            return fallback
        if store.damage is not None:
            self._damaged[sink.name] = (
                f"sink {sink.name}: {store.damage}; resumed from its previous copy "
                f"{store.previous} (some events are sent again)"
            )
        if saved is not None:
            return saved
        if self._legacy_damage is not None:
            self._unusable(sink.name, store, self._legacy_damage, fallback)
        log.info("sink %s: no saved cursor; starting at the %s of the WAL", sink.name, fallback)
        return fallback

    def _unusable(self, sink: str, store: PositionStore, why: str, fallback: str) -> None:
        store.damage = why  # shown in /status until a save (e.g. by rewind) replaces it
        if self.block:
            problem = (
                f"sink {sink}: no usable cursor: {why}. Not started: in block mode a sink "
                "never moves past events it has not delivered without an operator's word. "
                f"Choose where it resumes with: {rewind_hint(self.config_path, sink)}"
            )
            self._damaged[sink] = problem
            raise NoUsableCursor(problem)
        problem = f"sink {sink}: no usable cursor: {why}; started at the {fallback} of the WAL"
        log.error("%s (drop mode)", problem)
        self._damaged[sink] = problem

    def migrate(self, sinks: list[SinkConfig]) -> None:
        """Give every sink without a cursor the old single position (see the module doc)."""
        legacy = PositionStore(self.cfg.state_dir, self.cfg.wal.dir)
        if not legacy.path.exists():
            return
        waiting = [s for s in sinks if not self.store(s.name).exists()]
        if not waiting:
            log.info("%s is not needed: every sink has a cursor of its own", legacy.path)
            return
        try:
            old = legacy.load()
        except PositionFileError as exc:
            # Each sink without a cursor of its own then has no usable one (start_for).
            self._legacy_damage = str(exc)
            return
        if old is None:
            return
        saved_all = True
        for sink in waiting:
            cp = self.checkpoints(sink.name)
            cp.ack(old)
            saved_all = cp.flush() and saved_all
            log.info("sink %s: cursor taken from %s: %s", sink.name, legacy.path, describe(old))
        if not saved_all:
            return  # tried again at the next start
        try:
            os.replace(legacy.path, Path(f"{legacy.path}{MIGRATED_SUFFIX}"))
        except OSError as exc:
            log.error("cannot rename %s after the upgrade: %s", legacy.path, exc)
            return
        log.info("upgraded %s to one cursor per sink", legacy.path)
