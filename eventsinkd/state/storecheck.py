"""The dead-letter store as the daemon opens it: damage, a read-only directory, room.

At start the store is checked with ``PRAGMA quick_check``: a damaged store stops the
start (exit 3) with what to do, rather than failing every letter later while the
daemon looks healthy. A read-only state directory is a problem the daemon runs with
(not ready): it still delivers, and reads the store without writing. And the
``dead_letters.max_mb`` of every sink is compared with the room on the volume.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from eventsinkd.config.model import Config
from eventsinkd.state.deadletters import DB_FILE, RESERVE_FILE, DeadLetterStore
from eventsinkd.state.errors import CONTROL, StateErrors

log = logging.getLogger("eventsinkd.daemon.daemon")


def check_writable(state_dir: Path, errors: StateErrors) -> bool:
    """Whether ``state_dir`` can be written; a problem in ``errors`` while it cannot."""
    if os.access(state_dir, os.W_OK) or not state_dir.exists():
        errors.ok(CONTROL, str(state_dir))
        return True
    errors.failed(
        CONTROL,
        str(state_dir),
        f"the state directory {state_dir} is read-only: cursors and dead letters cannot "
        "be saved (after a restart events are sent again; refused events wait). Make it "
        "writable and restart eventsinkd",
    )
    return False


def open_store(cfg: Config, errors: StateErrors) -> DeadLetterStore | None:
    """The store, checked; None (logged, with what to do) if the daemon must not start."""
    writable = check_writable(cfg.state_dir, errors)
    path = cfg.state_dir / DB_FILE
    store: DeadLetterStore | None = None
    try:
        store = DeadLetterStore(cfg.state_dir, cfg.dead_letters.max_bytes, read_only=not writable)
        damage = store.check()
    except (sqlite3.OperationalError, OSError) as exc:  # not damage: e.g. permissions
        log.error("cannot open the dead-letter store %s: %s", path, exc)
        return None
    except sqlite3.Error as exc:  # "file is not a database"
        damage = str(exc)
    if store is None or damage is not None:
        if store is not None:
            store.close()
        log.error(
            "the dead-letter store %s is damaged (%s); not starting. Move it aside with its "
            "-wal and -shm files (mv %s %s.damaged) and start again: a new, empty store is "
            "made, and nothing in the WAL is lost. The old letters may be recovered with "
            "sqlite3 (.recover)",
            path,
            damage,
            path,
            path,
        )
        return None
    if writable:
        store.keep_reserve()
        _upgrade(store)
        wanted = cfg.dead_letters.max_bytes * max(len(cfg.events.sinks), 1)
        if (no_room := fits_volume(cfg.state_dir, wanted)) is not None:
            log.warning("%s", no_room)
    return store


def _upgrade(store: DeadLetterStore) -> None:
    """A store made before ``auto_vacuum=INCREMENTAL`` converted once (a VACUUM), if the
    volume has room for the copy that takes; otherwise its freed pages stay in the file."""
    if store.auto_vacuum():
        return
    size = store.path.stat().st_size
    st = os.statvfs(store.path.parent)
    if st.f_bavail * st.f_frsize < 2 * size + (1 << 20):
        log.warning(
            "the dead-letter store %s cannot give freed space back to its volume (made by an "
            "older version) and the volume has no room to convert it now",
            store.path,
        )
        return
    try:
        store.convert_to_incremental()
    except sqlite3.Error as exc:
        log.warning("could not convert the dead-letter store %s: %s", store.path, exc)
        return
    log.info("dead-letter store %s converted: freed space now goes back to the volume", store.path)


def fits_volume(state_dir: Path, wanted_bytes: int) -> str | None:
    """Why ``wanted_bytes`` of dead letters cannot fit the state directory's volume, or None."""
    try:
        st = os.statvfs(state_dir)
        used = sum(
            (state_dir / f).stat().st_size
            for f in (DB_FILE, f"{DB_FILE}-wal", RESERVE_FILE)
            if (state_dir / f).exists()
        )
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if wanted_bytes <= free + used:
        return None
    mb = 1024 * 1024
    return (
        f"dead letters may take up to {wanted_bytes / mb:g} MB (dead_letters.max_mb per sink) "
        f"but the volume of {state_dir} has {(free + used) / mb:.1f} MB for them: when it is "
        "full, new dead letters cannot be stored and their sinks stall (a /status problem) "
        "until it has room; lower dead_letters.max_mb or give the state directory more space"
    )
