"""Every sink's saved cursor in ``state_dir/cursors/<sink>.json``, and the upgrade to them.

Before per-sink cursors there was one saved position, ``state_dir/position.json``:
in block mode the oldest event any sink had not finished, in drop mode the
reading position. It is exactly where every sink must resume, so on the first
start after an upgrade each configured sink without a cursor takes it, the
cursors are saved, and the old file is renamed ``position.json.migrated``
(kept for reference; it is never read again). Sinks added later start at their
``start_at``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from eventsinkd.config import Config
from eventsinkd.sinkconfig import SinkConfig
from eventsinkd.state.errors import StateErrors
from eventsinkd.wal.position import (
    Checkpointer,
    Position,
    PositionFileError,
    PositionStore,
    cursor_file,
)
from eventsinkd.wal.scanner import StartAt

log = logging.getLogger(__name__)

MIGRATED_SUFFIX = ".migrated"


def load_saved(
    store: PositionStore, otherwise: str, report: Callable[[str], None]
) -> Position | None:
    """What ``store`` holds; None if nothing, or if it is unusable: then ``report`` is told
    why and ``otherwise`` (what happens instead)."""
    try:
        return store.load()
    except PositionFileError as exc:
        report(f"{exc}; {otherwise}")
        return None


class CursorFiles:
    def __init__(self, cfg: Config, errors: StateErrors | None = None) -> None:
        self.cfg = cfg
        self.errors = errors  # failed saves are reported there (problems, metric, readiness)
        self.problems: list[str] = []  # cursor files that could not be used at start
        self._checkpoints: dict[str, Checkpointer] = {}

    def checkpoints(self, sink: str) -> Checkpointer:
        cp = self._checkpoints.get(sink)
        if cp is None:
            store = PositionStore(self.cfg.state_dir, self.cfg.wal.dir, cursor_file(sink))
            store.errors = self.errors
            cp = self._checkpoints[sink] = Checkpointer(store, self.cfg.state_save_interval_s)
        return cp

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

    def start_for(self, sink: SinkConfig) -> Position | StartAt:
        """The saved cursor; else the sink's ``start_at``; else ``wal.start_at``."""
        fallback = sink.start_at or self.cfg.wal.start_at
        store = self.checkpoints(sink.name).store
        assert store is not None
        saved = self._load(store, f"sink {sink.name} started at the {fallback} of the WAL")
        if saved is None:
            if not store.path.exists():
                log.info(
                    "sink %s: no saved cursor; starting at the %s of the WAL", sink.name, fallback
                )
            return fallback
        return saved

    def _load(self, store: PositionStore, otherwise: str) -> Position | None:
        return load_saved(store, otherwise, self._problem)

    def _problem(self, problem: str) -> None:
        log.error("%s", problem)
        self.problems.append(problem)

    def migrate(self, sinks: list[SinkConfig]) -> None:
        """Give every sink without a cursor the old single position (see the module doc)."""
        legacy = PositionStore(self.cfg.state_dir, self.cfg.wal.dir)
        old = self._load(legacy, "sinks without a cursor start at their start_at")
        if old is None:
            return
        saved_all = True
        for sink in sinks:
            cp = self.checkpoints(sink.name)
            assert cp.store is not None
            if cp.store.path.exists():
                continue
            cp.ack(old)
            saved_all = cp.flush() and saved_all
            log.info("sink %s: cursor taken from %s: %s", sink.name, legacy.path, old)
        if not saved_all:
            return  # tried again at the next start
        try:
            os.replace(legacy.path, Path(f"{legacy.path}{MIGRATED_SUFFIX}"))
        except OSError as exc:
            log.error("cannot rename %s after the upgrade: %s", legacy.path, exc)
            return
        log.info("upgraded %s to one cursor per sink", legacy.path)
