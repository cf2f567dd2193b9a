"""The daemon's side of the dead-letter store: letters stored off the event loop, in batches.

A batch that cannot be stored fails every letter in it (their events stay unfinished
and are tried again later) and is reported once to :class:`StateErrors`, with what the
failure means and what to do; the next batch stored clears it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from eventsinkd.common.logs import RateLimitedLog
from eventsinkd.state.deadletters import DeadLetter, DeadLetterStore
from eventsinkd.state.errors import DEAD_LETTERS, StateErrors

log = logging.getLogger("eventsinkd.state.deadletters")
T = TypeVar("T")


def store_failure(path: Path, exc: BaseException) -> str:
    """What a failed write of the store means, and what to do about it."""
    text = str(exc)
    if "malformed" in text or "not a database" in text:
        hint = (
            f"the store is damaged: stop eventsinkd, move {path} (and its -wal and -shm "
            "files) aside and start again; its letters are lost unless recovered with "
            "sqlite3 .recover"
        )
    elif "full" in text or "No space" in text:
        hint = "the state volume is full: give it room, or eventsinkd dead-letters purge"
    elif "readonly" in text or "Read-only" in text:
        hint = "the state directory is read-only: make it writable"
    else:
        hint = "check the state directory"
    return f"cannot store dead letters in {path}: {text} ({hint}); their events wait, not lost"


class DeadLetterWriter:
    """The daemon's side: letters stored off the event loop, many per transaction.

    :meth:`add` returns once the letter is on disk, so block mode's cursor never
    passes an event before its letter is safe.
    """

    def __init__(self, store: DeadLetterStore, errors: StateErrors | None = None) -> None:
        self.store = store
        self.errors = errors
        self.evicted: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dead-letters")
        self._pending: list[tuple[DeadLetter, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._rlog = RateLimitedLog(log)

    async def add(self, letter: DeadLetter) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((letter, fut))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="dead-letters")
        await fut

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method on the store's thread (one writer at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    evicted = await asyncio.get_running_loop().run_in_executor(
                        self._pool, self.store.add, [x for x, _ in batch]
                    )
                except (sqlite3.Error, OSError) as exc:
                    if self.errors is not None:
                        self.errors.failed(
                            DEAD_LETTERS, str(self.store.path), store_failure(self.store.path, exc)
                        )
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if self.errors is not None:
                    self.errors.ok(DEAD_LETTERS, str(self.store.path))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                for sink, ids in evicted.items():
                    self.evicted[sink] = self.evicted.get(sink, 0) + len(ids)
                    self._rlog.log(
                        logging.WARNING,
                        f"evicted:{sink}",
                        "sink %s: dead-letter store full (%g MB): evicted the %d oldest "
                        "letter(s), %s ... %s (%d in all so far)",
                        sink,
                        self.store.max_bytes / (1024 * 1024),
                        len(ids),
                        ids[0],
                        ids[-1],
                        self.evicted[sink],
                    )
        finally:
            self._flushing = None

    async def close(self) -> None:
        if self._flushing is not None:
            await self._flushing
        self._pool.shutdown(wait=True)
