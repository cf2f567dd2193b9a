"""Saving a position to the state directory: one file per sink cursor (and the legacy one),
with the previous good copy kept beside it, and the checkpointer that saves it in the
background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from eventsinkd.common.paths import is_inside
from eventsinkd.state.files import atomic_write, keep_previous
from eventsinkd.wal.position import Position, describe

if TYPE_CHECKING:
    from eventsinkd.state.errors import StateErrors
    from eventsinkd.wal.statuses import StatusWatch

log = logging.getLogger("eventsinkd.wal.position")  # its name before the move

STATE_FILE = "position.json"  # the one position of versions before per-sink cursors
CURSORS_DIR = "cursors"
FORMAT_VERSION = 1


class PositionFileError(Exception):
    """The saved position exists but cannot be read or used."""


class NoUsableCursor(Exception):
    """A sink had a cursor and none of its copies can be used (block mode: not starting)."""


def cursor_file(sink: str) -> str:
    """A sink's position file, relative to ``state_dir`` (names are [A-Za-z0-9_.-]{1,64})."""
    return f"{CURSORS_DIR}/{sink}.json"


# Given a position read from a file, why it cannot be used (None: it can).
Usable = Callable[[Position], "str | None"]
PREVIOUS_SUFFIX = ".prev"


class PositionStore:
    """Loads and atomically saves one position file (by default the legacy one) in ``state_dir``.

    Every save first keeps the file it replaces as ``<file>.prev`` when that file is whole,
    so a file damaged later (by a disk, an editor, a rollback to a version that cannot read
    it) leaves the position before it: :meth:`load` falls back to it and says so in
    ``damage``. An older position only means events delivered again, never skipped.
    """

    def __init__(self, state_dir: Path, wal_dir: Path, file: str = STATE_FILE) -> None:
        if is_inside(state_dir, wal_dir):
            raise ValueError(
                f"state directory {state_dir} is inside the WAL directory {wal_dir}; "
                "eventsinkd never writes into the WAL directory"
            )
        self.state_dir = state_dir
        self.wal_dir = wal_dir
        self.path = state_dir / file
        self.previous = state_dir / f"{file}{PREVIOUS_SUFFIX}"
        self.last_error: str | None = None
        self.errors: StateErrors | None = None  # the daemon's: failed saves are problems there
        self.last_saved: Position | None = None
        # Why the file itself could not be used when the previous copy was loaded instead
        # (or nothing was): until a save replaces it. Set by load() and by CursorFiles.
        self.damage: str | None = None
        self._whole: bool | None = None  # the file on disk is whole (None: not known)
        self._rotate_error: str | None = None
        # The PENDING entries followed for status events (StatusWatch.saved()), as loaded or
        # last saved: kept as they are by saves that do not bring their own.
        self.statuses: object = None

    def exists(self) -> bool:
        """Whether there is a saved position at all (the file, or its previous copy)."""
        return self.path.exists() or self.previous.exists()

    def _read(self, path: Path) -> tuple[Position, dict[str, object]] | None:
        """The position in ``path``; None if there is no such file; PositionFileError if it
        cannot be read or is not a whole position file of this version."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PositionFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            doc = orjson.loads(raw)
            if doc.get("version") != FORMAT_VERSION:
                raise PositionFileError(
                    f"{path}: unknown format version {doc.get('version')!r} (written by "
                    "another version of eventsinkd?)"
                )
            pos = Position(str(doc["segment"]), int(doc["line"]), str(doc.get("last_key", "")))
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            why = "empty" if not raw.strip() else str(exc)
            raise PositionFileError(f"{path} is corrupt ({why})") from None
        if pos.line < 0:
            raise PositionFileError(f"{path} is corrupt (negative line)")
        return pos, doc

    def _usable(self, path: Path, usable: Usable | None) -> tuple[Position, dict[str, object]]:
        """What _read gives, also None and unusable positions as PositionFileError."""
        got = self._read(path)
        if got is None:
            raise PositionFileError(f"{path} is missing")
        why = usable(got[0]) if usable is not None else None
        if why is not None:
            raise PositionFileError(f"{path} {why}")
        return got

    def load(self, usable: Usable | None = None) -> Position | None:
        """The saved position, None if there is none; PositionFileError if neither the file
        nor its previous copy can be used (``usable`` may refuse a position that reads well,
        e.g. one that is not in the WAL). When only the previous copy can be, it is returned
        and ``damage`` says what is wrong with the file."""
        self.damage = None
        self._whole = None
        if not self.exists():
            self._whole = False
            return None
        try:
            pos, doc = self._usable(self.path, usable)
            self._whole = True
        except PositionFileError as exc:
            self._whole = False  # what cannot be used is never kept as the previous copy
            why = str(exc)
            try:
                pos, doc = self._usable(self.previous, usable)
            except PositionFileError as again:
                if not self.previous.exists():
                    raise exc from None
                raise PositionFileError(f"{why}; its previous copy: {again}") from None
            self.damage = why
            log.warning(
                "%s; resuming from the previous copy %s: %s (events after it are sent again)",
                why,
                self.previous,
                describe(pos),
            )
        saved_dir = doc.get("wal_dir")
        if saved_dir and Path(str(saved_dir)) != self.wal_dir.resolve():
            log.warning(
                "position file %s was written for WAL directory %s, now reading %s",
                self.path,
                saved_dir,
                self.wal_dir,
            )
        self.last_saved = pos
        self.statuses = doc.get("statuses")
        return pos

    def _is_whole(self, path: Path) -> bool:
        try:
            return self._read(path) is not None
        except PositionFileError:
            return False

    def _keep_previous(self) -> None:
        """Keep the file about to be replaced as the previous copy, if it is whole."""
        if self._whole is None:
            self._whole = self._is_whole(self.path)
        if not self._whole:
            return
        try:
            keep_previous(self.path, self.previous)
        except OSError as exc:
            # The save goes on: the previous copy left is older still, which only
            # means more events sent again if it is ever needed.
            msg = f"cannot keep {self.path} as {self.previous}: {exc.strerror or exc}"
            if msg != self._rotate_error:
                log.warning("%s", msg)
            self._rotate_error = msg
            return
        self._rotate_error = None

    def save(self, pos: Position, statuses: object = None) -> bool:
        """Write ``pos`` (and ``statuses``, else those loaded) atomically: temp file, fsync,
        rename, fsync dir; the file it replaces becomes the previous copy. False on failure."""
        keep = statuses if statuses is not None else self.statuses
        doc: dict[str, object] = {
            "version": FORMAT_VERSION,
            "segment": pos.segment,
            "line": pos.line,
            "last_key": pos.last_key,
            "wal_dir": str(self.wal_dir.resolve()),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        if keep is not None:
            doc["statuses"] = keep
        try:
            self._keep_previous()
            atomic_write(self.path, orjson.dumps(doc) + b"\n")
        except OSError as exc:
            msg = f"cannot save position to {self.path}: {exc.strerror or exc}"
            if self.errors is not None:
                self.errors.failed("cursor", str(self.path), msg)
            elif msg != self.last_error:
                log.error("%s; will keep retrying", msg)
            self.last_error = msg
            return False
        if self.errors is not None:
            self.errors.ok("cursor", str(self.path))
        elif self.last_error is not None:
            log.info("position saving works again (%s)", self.path)
        if self.damage is not None:
            log.info("%s saved whole again (%s): the problem at start is over", self.path, pos)
        self.last_error = None
        self.damage = None
        self._whole = True
        self.last_saved = pos
        self.statuses = keep
        return True


class Checkpointer:
    """Holds the acknowledged position and saves it periodically and on demand.

    The consumer decides how far the position may move by calling :meth:`ack`
    (in drop mode as soon as an event is handed over; in block mode only up to
    the oldest event a sink has not finished), never the reader.
    """

    def __init__(self, store: PositionStore | None, interval_s: float = 1.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self.acked: Position | None = None
        self.statuses: StatusWatch | None = None  # saved with the position, when there
        self._statuses_saved = -1  # the version of them last saved

    def ack(self, pos: Position) -> None:
        if self.acked is None or pos.key() > self.acked.key():
            self.acked = pos

    def flush(self) -> bool:
        """Save the acknowledged position (and the PENDING entries) if either changed since
        the last save."""
        watch = self.statuses
        if self.store is None or self.acked is None:
            return True
        if self.acked == self.store.last_saved and (
            watch is None or watch.version == self._statuses_saved
        ):
            return True
        if watch is None:
            return self.store.save(self.acked)
        version = watch.version
        saved = self.store.save(self.acked, watch.saved())
        if saved:
            self._statuses_saved = version
        return saved

    async def run(self) -> None:
        """Save every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.flush()
