"""Wake the readers when the WAL directory changes, and tell the directory what changed.

A watchfiles watcher (inotify on Linux) reports every file added, modified or
deleted; its changes go to the :class:`~eventsinkd.wal.directory.SegmentDirectory`,
which keeps its names up to date from them instead of listing the directory
again. inotify does not work on every filesystem (NFS, some container overlays),
and a watch dies with its directory, so a timer always runs too: with a watcher
it is the safety net, with ``force_polling`` (or while the watch is down) it is
the only trigger, and the directory then lists at its poll interval. While the
watch is live, a background listing every ``SURVEY_S`` or so catches changes an
overflowing event queue could lose.

One :class:`Waker` serves every cursor. A change is a new *generation*; a
reader notes the generation before it looks for data and waits only while the
generation is unchanged, so every waiting cursor wakes on every change, and a
change that lands while a reader is busy is never missed.

watchfiles' ``awatch`` is not used: it does not say when its watch is live, and
the directory must list again after that moment (what happened before it was not
reported), and only then. Its backend, ``RustNotify`` (watchfiles' documented
"Rust backend"), says so by returning from its constructor; ``awatch`` is a thin
loop around it, and so is :meth:`Waker._follow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path

from watchfiles._rust_notify import RustNotify

from eventsinkd.wal.directory import SegmentDirectory
from eventsinkd.wal.thread import ReaderThread

log = logging.getLogger(__name__)

# RustNotify checks for changes every STEP_MS and returns once a step brings no new
# one, or DEBOUNCE_MS after the first: a change wakes the readers one to two steps
# later. Under Nexus's churn (a new file per batch) no step is quiet, so the debounce
# bounds the delay (it was 20 ms: in the last fifth of each segment, where a file is
# made per batch, reads waited that long; issue 11). Measured in one run, at 1,000
# appends/s with that churn, append to arrival at a 0 ms receiver, p50 / p99: steps of
# 5 ms 4.4 / 9.7 ms, 4 ms 3.5 / 7.9 ms, 3 ms 2.5 / 6.0 ms; the daemon's CPU at 500
# appends/s: 19.7, 21.1, 25.4 % (each wake, and the GIL taken every step, costs).
STEP_MS = 4
DEBOUNCE_MS = 4
TIMEOUT_MS = 5_000  # an idle watch returns this often (to notice a stop)
SURVEY_S = 60.0  # a background listing this often while watching, at least...
SURVEY_COST_FACTOR = 100  # ...and at most 1/100 of the time spent listing
STOP_TIMEOUT_S = 5.0


class Waker:
    def __init__(
        self,
        wal_dir: Path,
        *,
        poll_interval_s: float,
        force_polling: bool,
        directory: SegmentDirectory | None = None,
    ) -> None:
        self.wal_dir = wal_dir
        self.poll_interval_s = poll_interval_s
        self.force_polling = force_polling
        self.directory = directory  # told what changed; None: only wake the readers
        self.generation = 0
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._halt = threading.Event()  # tells a watch in its thread to return
        self._task: asyncio.Task[None] | None = None
        self.watching = False  # True while a watchfiles watcher is live

    def start(self) -> None:
        if not self.force_polling and self._task is None:
            self._stop.clear()
            self._halt.clear()
            self._task = asyncio.create_task(self._watch(), name="wal-watch")

    async def stop(self) -> None:
        self._stop.set()
        self._halt.set()
        task, self._task = self._task, None
        if task is None:
            return
        # The watch returns within STEP_MS of the halt; cancelling is the last resort.
        await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def notify(self) -> None:
        """Wake every waiter: they all hold the event being set, the next wait gets a new one."""
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, seen: int | None = None) -> None:
        """Return once the generation differs from ``seen``, or after ``poll_interval_s``.

        ``seen`` is :attr:`generation` as noted before the caller last looked for
        data; None waits for the next change.
        """
        if seen is not None and seen != self.generation:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), self.poll_interval_s)

    def _live(self, watching: bool) -> None:
        self.watching = watching
        if self.directory is not None:
            if watching:
                self.directory.watch_started()
            else:
                self.directory.watch_stopped()

    async def _watch(self) -> None:
        # Daemon threads (not a pool joined at exit): a listing stuck on a hung
        # filesystem must not keep a stopping daemon alive.
        threads = ReaderThread(f"wal-watch {self.wal_dir.name}")
        surveys = ReaderThread(f"wal-survey {self.wal_dir.name}")
        failed_before = False
        try:
            while not self._stop.is_set():
                try:
                    notify = RustNotify([str(self.wal_dir)], False, False, 300, False, True)
                    try:
                        self._live(True)
                        failed_before = False
                        await self._follow(notify, threads, surveys)
                    finally:
                        self._live(False)
                        notify.close()
                except Exception as exc:  # the directory is missing, unreadable, or gone
                    if not failed_before:
                        log.info(
                            "not watching %s (%s); polling every %.2fs",
                            self.wal_dir,
                            exc,
                            self.poll_interval_s,
                        )
                        failed_before = True
                # The watch ended (directory removed?) or never started: try again later.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.poll_interval_s)
        finally:
            threads.stop()
            surveys.stop()

    async def _follow(
        self, notify: RustNotify, threads: ReaderThread, surveys: ReaderThread
    ) -> None:
        survey = asyncio.create_task(self._survey(surveys), name="wal-survey")
        try:
            while not self._stop.is_set():
                raw = await threads.run(
                    lambda: notify.watch(DEBOUNCE_MS, STEP_MS, TIMEOUT_MS, self._halt)
                )
                if raw == "stop":
                    return
                if isinstance(raw, set):
                    if self.directory is not None:
                        self.directory.changed(raw)
                    self.notify()
                    if any(path == str(self.wal_dir) for _, path in raw):
                        return  # the directory itself was deleted or moved: the watch is dead
                # "timeout": nothing happened; "signal" cannot happen outside the main thread
                if self.directory is not None and self.directory.stale_watch:
                    return
        finally:
            survey.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await survey

    async def _survey(self, surveys: ReaderThread) -> None:
        """List the directory now and then in the background: what a lost event hid."""
        directory = self.directory
        if directory is None:
            return
        while True:
            await asyncio.sleep(max(SURVEY_S, SURVEY_COST_FACTOR * directory.list_cost_s))
            started = time.monotonic()
            try:
                differs = await surveys.run(directory.survey)
            except OSError:
                continue  # the watch fails too, or the next survey succeeds
            if differs:  # mostly changes whose events are on their way
                log.debug(
                    "WAL directory %s: the listing (%.2fs) differs from the names known",
                    self.wal_dir,
                    time.monotonic() - started,
                )
                self.notify()
