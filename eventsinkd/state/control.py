"""Who acts on the state directory: the running daemon, or a command when none runs.

The daemon holds an exclusive lock (``flock``) on ``state_dir/eventsinkd.lock``
for its whole life. A command that sends dead letters or moves a cursor
(``dead-letters replay``, ``rewind``) tries the same lock without waiting:

* it gets it: no daemon runs on this state directory. The command does the
  work itself and holds the lock meanwhile (a daemon starting then waits);
* it does not: a daemon runs. The command leaves a request in the state
  directory - a flag on the dead letters, a file in ``requests/`` for a
  rewind - and waits while the daemon carries it out (a rewind's answer, moved
  or refused, is left beside it as ``rewind-<sink>.json.answer``).

So only one process ever sends a given dead letter or moves a cursor, and the
admin server, which has no authentication, is not involved. Only someone who
can write the state directory can make a request.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from eventsinkd.state.files import atomic_write
from eventsinkd.wal.position import Position

LOCK_FILE = "eventsinkd.lock"
REQUESTS_DIR = "requests"
REPLAY_FILE = "replay"  # in REQUESTS_DIR: letters are marked for replay (its change wakes)
ANSWER_SUFFIX = ".answer"  # after the request's name: never taken for a request


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd = -1

    def acquire(self, holder: str, *, wait_s: float = 0.0) -> bool:
        """Take the lock, waiting up to ``wait_s``; False if another process keeps it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            # A read-only state directory: lock without writing (the file, else the directory).
            target = self.path if self.path.exists() else self.path.parent
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.1)
        with contextlib.suppress(OSError):  # EBADF/EISDIR when locked read-only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who holds (or last held) the lock, as it wrote itself down."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


@dataclass(frozen=True)
class RewindRequest:
    sink: str
    to: Position
    forward: bool  # the operator allowed moving forward past unfinished events
    path: Path

    def answer(self, doc: dict[str, object]) -> None:
        """Leave the daemon's answer for the command, then take the request away.

        Raises OSError (a state write that failed: the command then waits in vain)."""
        atomic_write(_answer_path(self.path), orjson.dumps(doc))
        self.path.unlink(missing_ok=True)


def _rewind_path(state_dir: Path, sink: str) -> Path:
    return state_dir / REQUESTS_DIR / f"rewind-{sink}.json"


def _answer_path(request: Path) -> Path:
    return request.with_name(request.name + ANSWER_SUFFIX)


def request_rewind(state_dir: Path, sink: str, to: Position, *, forward: bool = False) -> Path:
    """Ask the running daemon to move ``sink``'s cursor to ``to``; the file goes when done,
    leaving the daemon's answer (:func:`take_answer`)."""
    path = _rewind_path(state_dir, sink)
    _answer_path(path).unlink(missing_ok=True)
    doc = {
        "sink": sink,
        "segment": to.segment,
        "line": to.line,
        "last_key": to.last_key,
        "forward": forward,
    }
    atomic_write(path, orjson.dumps(doc))
    return path


def request_replay(state_dir: Path) -> None:
    """Tell the running daemon that dead letters are marked for replay (the marks are in
    the store; this file only wakes the daemon, which watches ``requests/``)."""
    atomic_write(state_dir / REQUESTS_DIR / REPLAY_FILE, b"")


def take_answer(request: Path) -> dict[str, object] | None:
    """The daemon's answer to a request that is gone (None: none was left)."""
    path = _answer_path(request)
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    path.unlink(missing_ok=True)
    return doc if isinstance(doc, dict) else None


def pending_rewinds(state_dir: Path) -> list[RewindRequest]:
    """Rewind requests waiting in ``state_dir``; unreadable ones are removed."""
    out: list[RewindRequest] = []
    folder = state_dir / REQUESTS_DIR
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("rewind-*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
            pos = Position(str(doc["segment"]), int(doc["line"]), str(doc["last_key"]))
            out.append(RewindRequest(str(doc["sink"]), pos, doc.get("forward") is True, path))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            with contextlib.suppress(OSError):
                path.unlink()
    return out
