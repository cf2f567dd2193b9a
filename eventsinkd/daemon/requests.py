"""When to look at what `rewind` and `dead-letters replay` leave in the state directory.

The commands leave their requests in ``state_dir/requests/``: a rewind file, or for a
replay the marks in the dead-letter store and a ``replay`` file that only wakes the
daemon. The daemon watches that directory (inotify on the event loop,
:mod:`eventsinkd.wal.inotify`) and looks as soon as something lands there, and
otherwise every ``REQUESTS_CHECK_S`` (whether the state directory is still writable
is looked at then too). Where the directory cannot be watched (no inotify, a
read-only state directory that has none) it looks every ``REQUESTS_EVERY_S``, as a
command waits for its answer. A looked-at request that was not there costs a
listing and a query of the store, in a thread each: no longer twice a second while
nothing happens (issue 25).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import Change

from eventsinkd.state.control import ANSWER_SUFFIX, REQUESTS_DIR
from eventsinkd.wal import inotify

log = logging.getLogger("eventsinkd.daemon")

REQUESTS_EVERY_S = 0.5  # unwatched: how often the requests are looked for
REQUESTS_CHECK_S = 10.0  # watched: how often all the same (and the state dir's writability)


class Requests:
    """Calls ``serve()`` once at start, on every change in ``state_dir/requests/``, and at
    the intervals above; :meth:`run` until cancelled."""

    def __init__(self, state_dir: Path, serve: Callable[[], Awaitable[None]]) -> None:
        self.folder = state_dir / REQUESTS_DIR
        self._serve = serve
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self.watched = False

    async def run(self) -> None:
        watch = asyncio.create_task(self._watch(), name="requests-watch")
        try:
            while True:
                await self._serve()
                every = REQUESTS_CHECK_S if self.watched else REQUESTS_EVERY_S
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # comes as the event is set, and the daemon would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):
                        await self._changed.wait()
                self._changed.clear()
        finally:
            self._stop.set()
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _watch(self) -> None:
        if not inotify.AVAILABLE:
            return
        while not self._stop.is_set():
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                await inotify.watch_directory(self.folder, self._changes, self._live, self._stop)
            except OSError as exc:
                log.debug(
                    "not watching %s (%s): looking every %ss", self.folder, exc, REQUESTS_EVERY_S
                )
            finally:
                self.watched = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REQUESTS_CHECK_S):
                    await self._stop.wait()

    def _live(self, _drain: Callable[[], None]) -> None:
        self.watched = True
        self._changed.set()  # what landed before the watch

    def _changes(self, changes: inotify.Changes, overflowed: bool) -> None:
        """A request landed (renamed into place by the command; not the daemon's own
        answers, nor the temporary files, nor a removal)."""
        added = int(Change.added)
        if overflowed or any(
            c == added
            and not (name := os.path.basename(p)).startswith(".")
            and not name.endswith(ANSWER_SUFFIX)
            for c, p in changes
        ):
            self._changed.set()
