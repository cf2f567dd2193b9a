"""Wake the readers when the WAL directory changes, and tell the directory what changed.

On Linux an inotify descriptor on the event loop (:mod:`eventsinkd.wal.inotify`)
reports every file added, modified or deleted, the moment it happens and at no
cost while nothing does; elsewhere watchfiles' watcher does. The changes go to
the :class:`~eventsinkd.wal.directory.SegmentDirectory`, which keeps its names up
to date from them instead of listing the directory again.

inotify does not work on every filesystem (NFS written from another host, some
FUSE mounts), and a watch dies with its directory, so a timer runs too: with
``force_polling`` (or while the watch is down) it is the only trigger, and the
directory then lists at its poll interval; while a watch is live it is a safety
net that looks every ``WATCHED_CHECK_S``. If that look finds data no change was
reported for, the watch is not trusted any more: a warning says so and the
readers look every ``poll_interval_s``, as without a watch. While the watch is
live, a background listing every ``SURVEY_S`` or so catches changes an
overflowing event queue could lose (an overflow itself makes the directory list).

One :class:`Waker` serves every cursor. A change is a new *generation*; a
reader notes the generation before it looks for data and waits only while the
generation is unchanged, so every waiting cursor wakes on every change, and a
change that lands while a reader is busy is never missed.

watchfiles' ``awatch`` is not used: it does not say when its watch is live, and
the directory must list again after that moment (what happened before it was not
reported), and only then. Its backend, ``RustNotify`` (watchfiles' documented
"Rust backend"), says so by returning from its constructor; ``awatch`` is a thin
loop around it, and so is :meth:`Waker._watchfiles`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from watchfiles._rust_notify import RustNotify

from eventsinkd.wal import inotify
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
# A stream of changes (a read within HOLD_S of the last) is read at most once per HOLD_S:
# several appends per wake at Nexus's higher rates, none delayed after a quiet spell.
# Measured at 1,000 appends/s (python -m bench.cost --quick, one run each): holds of 0 /
# 2 / 3 ms, daemon CPU 28.2 / 25.4 / 22.2 %, fsync -> arrival p50 0.01 / 0.47 / 1.27 ms,
# p99 0.35 / 2.21 / 3.34 ms (the targets are 1.5 and 4 ms).
HOLD_S = 0.002
WATCHED_CHECK_S = 10.0  # with a live watch trusted, readers look this often all the same

Backend = Literal["inotify", "watchfiles", "polling"]


def default_backend() -> Backend:
    return "inotify" if inotify.AVAILABLE else "watchfiles"


def _time_out(waiter: asyncio.Future[bool | None]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class Waker:
    def __init__(
        self,
        wal_dir: Path,
        *,
        poll_interval_s: float,
        force_polling: bool,
        directory: SegmentDirectory | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.wal_dir = wal_dir
        self.poll_interval_s = poll_interval_s
        self.backend: Backend = "polling" if force_polling else backend or default_backend()
        self.directory = directory  # told what changed; None: only wake the readers
        self.generation = 0
        self._waiters: set[asyncio.Future[bool | None]] = set()  # True: timed out
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._halt = threading.Event()  # tells a watch in its thread to return
        self._task: asyncio.Task[None] | None = None
        self.watching = False  # True while a watch is live
        self.trusted = True  # False once a look found data no change was reported for
        self._failed = False  # the last attempt at a watch failed (and was logged)
        self._drain: Callable[[], None] | None = None  # reads a live inotify watch now

    def start(self) -> None:
        if self.backend != "polling" and self._task is None:
            self._stop.clear()
            self._halt.clear()
            self._task = asyncio.create_task(self._watch(), name="wal-watch")

    async def stop(self) -> None:
        self._stop.set()
        self._halt.set()
        task, self._task = self._task, None
        if task is None:
            return
        # The watch returns at once (inotify) or within STEP_MS of the halt (watchfiles);
        # cancelling is the last resort.
        await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def notify(self) -> None:
        """A new generation: wake every waiter."""
        self.generation += 1
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, seen: int | None = None, *, poll: bool = False) -> None:
        """Return once the generation differs from ``seen``, or after the poll interval
        (``WATCHED_CHECK_S`` while a trusted watch is live, unless ``poll``: the caller
        waits for something no change reports, such as permissions given back).

        ``seen`` is :attr:`generation` as noted before the caller last looked for
        data; None waits for the next change.
        """
        if seen is not None and seen != self.generation:
            return
        timeout = self.poll_interval_s
        if self.watching and self.trusted and not poll:
            timeout = max(timeout, WATCHED_CHECK_S)
        # A future and a timer (not wait_for, which makes a task each time: this is the
        # wait of every wake-up).
        loop = self._loop
        if loop is None:  # kept: asyncio.get_running_loop() is a getpid() call on 3.11
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool | None] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_later(timeout, _time_out, waiter)
        try:
            timed_out = await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)
        if timed_out and self._drain is not None:  # what the kernel queued, not yet read
            self._drain()

    def missed(self) -> None:
        """A reader woken by the timer found data: the watch did not report a change."""
        if not (self.watching and self.trusted):
            return
        self.trusted = False
        log.warning(
            "the watch on %s missed a change (a filesystem that does not report changes, "
            "such as NFS written from another host?): looking every %.2fs from now on; "
            "set wal.force_polling: true to say so",
            self.wal_dir,
            self.poll_interval_s,
        )
        if self.directory is not None:
            self.directory.watch_stopped()

    def _live(self, watching: bool, on: tuple[int, int] | None = None) -> None:
        """The watch (of the directory ``on``, if known) is live (what happened before it
        was not reported) or down; the readers look now, and wait as the new state says."""
        self.watching = watching
        if watching:
            self._failed = False
        if self.directory is not None:
            if watching and self.trusted:
                self.directory.watch_started(on)
            else:
                self.directory.watch_stopped()
        self.notify()

    def _changes(self, changes: inotify.Changes, overflowed: bool) -> None:
        """What a watch reported: told to the directory; the readers woken if a segment
        changed (not for Nexus's temporary files)."""
        directory = self.directory
        if directory is None:
            self.notify()
            return
        if overflowed:  # changes were lost (or permissions changed): the directory lists
            log.debug(
                "WAL directory %s: the watch's event queue overflowed, or the directory's "
                "permissions changed: listing it again",
                self.wal_dir,
            )
            if self.trusted:
                directory.list_again()
        if directory.changed(changes) or overflowed:
            self.notify()

    async def _watch(self) -> None:
        # Daemon threads (not a pool joined at exit): a listing stuck on a hung
        # filesystem must not keep a stopping daemon alive.
        surveys = ReaderThread(f"wal-survey {self.wal_dir.name}")
        threads = ReaderThread(f"wal-watch {self.wal_dir.name}")
        try:
            while not self._stop.is_set():
                survey = asyncio.create_task(self._survey(surveys), name="wal-survey")
                try:
                    if self.backend == "inotify":
                        await inotify.watch_directory(
                            self.wal_dir, self._changes, self._went_live, self._stop, HOLD_S
                        )
                    else:
                        await self._watchfiles(threads)
                except Exception as exc:  # the directory is missing, unreadable, or gone
                    if not self._failed:  # logged once until a watch is live again
                        log.info(
                            "not watching %s (%s); polling every %.2fs",
                            self.wal_dir,
                            exc,
                            self.poll_interval_s,
                        )
                        self._failed = True
                finally:
                    survey.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await survey
                    self._drain = None
                    if self.watching:
                        self._live(False)
                # The watch ended (directory removed?) or never started: try again once
                # the directory is there (inotify on its parent says when), or later.
                if self.backend == "inotify" and not inotify.is_directory(self.wal_dir):
                    await inotify.wait_for_directory(self.wal_dir, self._stop, self.poll_interval_s)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_interval_s):
                            await self._stop.wait()
        finally:
            threads.stop()
            surveys.stop()

    def _went_live(self, drain: Callable[[], None]) -> None:
        self._drain = drain
        try:  # the directory the watch was just put on (a stat on the loop, as the watch's)
            st = os.stat(self.wal_dir)
        except OSError:
            self._live(True)
        else:
            self._live(True, (st.st_dev, st.st_ino))

    async def _watchfiles(self, threads: ReaderThread) -> None:
        notify = RustNotify([str(self.wal_dir)], False, False, 300, False, True)
        try:
            self._live(True)
            await self._follow(notify, threads)
        finally:
            notify.close()

    async def _follow(self, notify: RustNotify, threads: ReaderThread) -> None:
        while not self._stop.is_set():
            raw = await threads.run(
                lambda: notify.watch(DEBOUNCE_MS, STEP_MS, TIMEOUT_MS, self._halt)
            )
            if raw == "stop":
                return
            if isinstance(raw, set):
                self._changes(raw, False)
                if any(path == str(self.wal_dir) for _, path in raw):
                    return  # the directory itself was deleted or moved: the watch is dead
            # "timeout": nothing happened; "signal" cannot happen outside the main thread
            if self.directory is not None and self.directory.stale_watch:
                return

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
