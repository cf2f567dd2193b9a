"""Dead letters: events a sink gave up on, kept in ``state_dir`` until replayed or purged.

One SQLite database (``state_dir/dead-letters.sqlite3``) holds every sink's
letters. SQLite rather than files of our own: each letter is stored durably
in one transaction (``synchronous=FULL``), the daemon and the
``dead-letters`` commands can use it at the same time (its own locking, with a
busy timeout), and eviction of the oldest letters is one statement. It ships
with Python.

Each sink keeps at most ``max_bytes`` of letters (body and ids); past that the
oldest are evicted, counted and logged.

The store has to fit its volume, which may be small. Its write-ahead log is
checkpointed and truncated after every batch of writes (``wal_checkpoint(TRUNCATE)``,
with ``journal_size_limit`` as a bound should a checkpoint be held up), so it never
grows to SQLite's default 4 MB between automatic checkpoints. Stores made by this
version use ``auto_vacuum=INCREMENTAL``: pages freed by eviction, replay or purge
go back to the volume in small steps. Deleting needs free space too (the deletion
is written to the write-ahead log first), so the store keeps a small reserve file
beside it that ``purge`` gives up first, and purges in small transactions, each
checkpointed, that free space for the next.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_FILE = "dead-letters.sqlite3"
RESERVE_FILE = "dead-letters.reserve"
RESERVE_BYTES = 256 * 1024  # what purge needs to start on a full volume (docs/state-directory.md)
JOURNAL_LIMIT_BYTES = 1024 * 1024  # the write-ahead log is truncated to this after a checkpoint
AUTOCHECKPOINT_PAGES = 256  # 1 MB of 4 KB pages, instead of SQLite's default 1000
VACUUM_STEP_PAGES = 16  # pages given back to the volume per transaction
PURGE_MAX_CHUNK = 512  # letters deleted per transaction, at most
OVERHEAD_BYTES = 128  # per letter, beyond its body and ids: times, counts, outcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    first_attempt REAL NOT NULL,
    last_attempt REAL NOT NULL,
    last_outcome TEXT NOT NULL,
    size INTEGER NOT NULL,
    replay INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sink, webhook_id)
);
"""
_COLUMNS = (
    "sink, webhook_id, event_type, timestamp, body, attempts, first_attempt, last_attempt, "
    "last_outcome, replay"
)


@dataclass(slots=True, frozen=True)
class DeadLetter:
    sink: str
    webhook_id: str
    event_type: str
    timestamp: str  # the entry's WAL time, as Nexus wrote it
    body: bytes  # exactly what the sink sent
    attempts: int
    first_attempt: float  # Unix seconds
    last_attempt: float
    last_outcome: str  # e.g. "HTTP 422" or "connection refused"
    replay: bool = False  # a replay is requested from the running daemon

    @property
    def size(self) -> int:
        return len(self.body) + len(self.webhook_id) + len(self.last_outcome) + OVERHEAD_BYTES


class DeadLetterStore:
    """Synchronous access to the database; the daemon uses it through :class:`DeadLetterWriter`."""

    def __init__(
        self, state_dir: Path, max_bytes: int = 100 * 1024 * 1024, *, read_only: bool = False
    ) -> None:
        """``read_only``: for commands that only read; works on a read-only state directory,
        and a missing store reads as empty (nothing is created)."""
        self.path = state_dir / DB_FILE
        self.reserve = state_dir / RESERVE_FILE
        self.max_bytes = max_bytes
        # One connection, used from the writer's thread and (at scrape time) the event
        # loop's: every use holds the lock.
        self._lock = threading.RLock()
        if read_only:
            self._db = _open_read_only(self.path)
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        if new:  # on an existing store this writes (and fails on a full volume)
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT_BYTES}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        self._db.executescript(_SCHEMA)

    def check(self) -> str | None:
        """What ``PRAGMA quick_check`` finds wrong with the store; None if nothing."""
        try:
            rows = self._query("PRAGMA quick_check")
        except sqlite3.DatabaseError as exc:
            return str(exc)
        found = [str(r[0]) for r in rows if r[0] != "ok"]
        return "; ".join(found[:3]) if found else None

    def auto_vacuum(self) -> bool:
        """Whether freed pages go back to the volume (``auto_vacuum=INCREMENTAL``)."""
        return bool(self._query("PRAGMA auto_vacuum")[0][0] == 2)

    def convert_to_incremental(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("VACUUM")
            self._checkpoint()

    def keep_reserve(self) -> None:
        """Make sure the reserve file exists (best effort: not when the volume is full)."""
        if self.reserve.exists():
            return
        try:
            with self.reserve.open("wb") as fh:
                fh.write(bytes(RESERVE_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self.reserve.unlink()

    def compact(self) -> None:
        """Give freed pages back to the volume, then empty the write-ahead log.

        Each step is its own small transaction, checkpointed, so on a nearly full
        volume every step needs only the space the one before freed."""
        with self._lock:
            before = None
            while self.auto_vacuum():
                free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
                if not free or free == before:  # nothing (more) to give back
                    break
                before = free
                with self._db:
                    self._db.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})").fetchall()
                self._checkpoint()
            self._checkpoint()

    def _checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:  # commits, or rolls back on an exception
            yield self._db

    def _query(self, sql: str, args: list[str | float] | tuple[()] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add(self, letters: list[DeadLetter]) -> dict[str, list[str]]:
        """Store ``letters`` in one transaction; returns the webhook-ids evicted, by sink.

        A letter for an id the sink already holds replaces it (a rewind can
        fail the same event again).
        """
        evicted: dict[str, list[str]] = {}
        with self._tx() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO letters ({_COLUMNS}, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                [
                    (
                        x.sink,
                        x.webhook_id,
                        x.event_type,
                        x.timestamp,
                        x.body,
                        x.attempts,
                        x.first_attempt,
                        x.last_attempt,
                        x.last_outcome,
                        x.size,
                    )
                    for x in letters
                ],
            )
            for sink in {x.sink for x in letters}:
                # Newest first, keep while the running total fits; the rest are the oldest.
                rows = db.execute(
                    "SELECT seq, webhook_id FROM (SELECT seq, webhook_id, "
                    "SUM(size) OVER (ORDER BY seq DESC) AS total FROM letters WHERE sink = ?) "
                    "WHERE total > ? ORDER BY seq",
                    (sink, self.max_bytes),
                ).fetchall()
                if rows:
                    db.executemany("DELETE FROM letters WHERE seq = ?", [(r[0],) for r in rows])
                    evicted[sink] = [r[1] for r in rows]
        with contextlib.suppress(sqlite3.Error):  # stored: a checkpoint can wait for the next
            if evicted:
                self.compact()
            else:
                self._checkpoint()
        return evicted

    def letters(self, sink: str | None = None, *, replay_only: bool = False) -> list[DeadLetter]:
        where, args = self._where(sink)
        if replay_only:
            where += " AND replay = 1"
        rows = self._query(f"SELECT {_COLUMNS} FROM letters WHERE {where} ORDER BY seq", args)
        return [
            DeadLetter(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6], r[7], r[8], bool(r[9]))
            for r in rows
        ]

    def replay_requests(self) -> list[DeadLetter]:
        return self.letters(replay_only=True)

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT sink, COUNT(*) FROM letters GROUP BY sink")
        return {r[0]: r[1] for r in rows}

    def request_replay(self, sink: str | None, ids: list[str] | None) -> list[DeadLetter]:
        """Mark letters for the running daemon to replay; returns those marked."""
        where, args = self._where(sink, ids)
        with self._tx() as db:
            db.execute(f"UPDATE letters SET replay = 1 WHERE {where}", args)
        return [
            x for x in self.letters(sink, replay_only=True) if ids is None or x.webhook_id in ids
        ]

    def delivered(self, sink: str, webhook_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM letters WHERE sink = ? AND webhook_id = ?", (sink, webhook_id))
        with contextlib.suppress(sqlite3.Error):
            self.compact()

    def failed_again(self, sink: str, webhook_id: str, outcome: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE letters SET attempts = attempts + 1, last_attempt = ?, "
                "last_outcome = ?, replay = 0 WHERE sink = ? AND webhook_id = ?",
                (time.time(), outcome, sink, webhook_id),
            )

    def purge(self, sink: str | None = None, before: float | None = None) -> int:
        """Delete letters (of ``sink``, last tried before ``before``) held when called;
        returns how many.

        On a full volume: the reserve file goes first, while this holds the write lock (so
        the room is this purge's, not a waiting writer's), then small transactions, each
        giving space back for the next, growing while they succeed."""
        where, args = self._where(sink)
        if before is not None:
            where += " AND last_attempt < ?"
            args.append(before)
        last = self._query("SELECT COALESCE(MAX(seq), 0) FROM letters")[0][0]
        where += " AND seq <= ?"
        args.append(last)
        sql = f"DELETE FROM letters WHERE seq IN (SELECT seq FROM letters WHERE {where} LIMIT ?)"
        purged, chunk = 0, 1
        while True:
            try:
                n = self._delete_step(sql, [*args, chunk])
            except sqlite3.OperationalError as exc:
                if chunk == 1 or "full" not in str(exc):
                    raise
                chunk = 1
                continue
            purged += n
            with contextlib.suppress(sqlite3.OperationalError):  # a writer took the room
                self.compact()
            if n < chunk:
                break
            chunk = min(chunk * 2, PURGE_MAX_CHUNK)
        self.keep_reserve()
        return purged

    def _delete_step(self, sql: str, args: list[str | float]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                with contextlib.suppress(OSError):
                    self.reserve.unlink()
                n: int = self._db.execute(sql, args).rowcount
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        return n

    @staticmethod
    def _where(sink: str | None, ids: list[str] | None = None) -> tuple[str, list[str | float]]:
        clauses, args = ["1 = 1"], list[str | float]()
        if sink is not None:
            clauses.append("sink = ?")
            args.append(sink)
        if ids:
            clauses.append(f"webhook_id IN ({', '.join('?' * len(ids))})")
            args.extend(ids)
        return " AND ".join(clauses), args


def _open_read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened for reading only: ``mode=ro``, or ``immutable`` where SQLite cannot
    make its shared-memory file (a read-only directory left without one: the daemon closed
    the store, so its write-ahead log was checkpointed and removed); an in-memory empty
    store if there is no file."""
    if not path.exists():
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.executescript(_SCHEMA)
    else:
        uri = path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
            db.execute("SELECT COUNT(*) FROM letters").fetchone()
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) and "unable to open" not in str(exc):
                raise
            db = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
    db.execute("PRAGMA query_only=1")  # a write fails ("readonly"), never lands in memory
    return db
