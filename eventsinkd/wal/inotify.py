"""inotify, read on the event loop: a wake exactly when Nexus writes, nothing when it does not.

The inotify descriptor is registered with the loop (``add_reader``): no thread, no
timer. One read takes every event queued since the last, so a burst of appends
(Nexus's group commit, its file churn) is one wake. What the kernel reports is
turned into the ``(Change, path)`` pairs watchfiles reports, so the
:class:`~eventsinkd.wal.directory.SegmentDirectory` reads both alike.

The binding is ``inotify_simple`` (the ``inotify_init1``/``inotify_add_watch`` calls,
the flags and the parsing of the event records, with ctypes); what is done with the
events is here. Where it cannot be imported (not Linux), :data:`AVAILABLE` is False
and the waker uses watchfiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import Change

try:
    from inotify_simple import INotify, flags

    AVAILABLE = True
except (ImportError, OSError):  # pragma: no cover - not Linux
    AVAILABLE = False

Changes = set[tuple[int, str]]  # (watchfiles Change, path): what the directory is told
# The changes, and whether to look at everything again (some were lost, or the
# directory's permissions changed).
OnChanges = Callable[[Changes, bool], None]

if AVAILABLE:
    ADDED = flags.CREATE | flags.MOVED_TO
    DELETED = flags.DELETE | flags.MOVED_FROM
    MODIFIED = flags.MODIFY
    GONE = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED | flags.UNMOUNT
    # Only directories (a path turned into a file is an error, not a watch), and no
    # events for files already unlinked but still open.
    # ATTRIB: the directory's own permissions changed (a WAL that became unreadable, or
    # readable again, is looked at now).
    DIRECTORY_MASK = ADDED | DELETED | MODIFIED | flags.ATTRIB | flags.DELETE_SELF
    DIRECTORY_MASK |= flags.MOVE_SELF
    DIRECTORY_MASK |= flags.ONLYDIR | flags.EXCL_UNLINK
    PARENT_MASK = ADDED | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR
    OVERFLOW = flags.Q_OVERFLOW


def _changes(events: Iterable[tuple[int, int, int, str]], path: str) -> tuple[Changes, bool, bool]:
    """The events as watchfiles' changes; whether the readers must look again whatever
    changed (the queue overflowed, or the directory's own permissions changed); whether
    the watched directory itself is gone (deleted, moved away, unmounted)."""
    changes: Changes = set()
    overflowed = gone = False  # overflowed: look at everything again
    prefix = path + os.sep
    for _wd, mask, _cookie, name in events:
        if mask & OVERFLOW or (mask & flags.ATTRIB and not name):
            overflowed = True
        elif mask & GONE:
            gone = True
        elif name:
            if mask & ADDED:
                changes.add((int(Change.added), prefix + name))
            elif mask & DELETED:
                changes.add((int(Change.deleted), prefix + name))
            elif mask & MODIFIED:
                changes.add((int(Change.modified), prefix + name))
    return changes, overflowed, gone


async def _stopped(stop: asyncio.Event) -> None:
    await stop.wait()


async def _read_until(
    ino: INotify,
    stop: asyncio.Event,
    on_events: Callable[[list[tuple[int, int, int, str]]], bool],
    live: Callable[[Callable[[], None]], None] | None = None,
    hold_s: float = 0.0,
) -> None:
    """Hand every read of ``ino`` to ``on_events`` until it returns True or ``stop`` is set;
    a failing read raises here. ``live`` is given the function that reads now (what is
    queued but not yet seen by the loop), once reading has begun.

    ``hold_s``: a read that comes within ``hold_s`` of the one before (a stream of
    changes) leaves the descriptor alone for ``hold_s`` afterwards, and what came
    meanwhile is read in one go at its end. A change after a quiet spell is handed over
    at once; a stream of them at most once per ``hold_s`` (one wake for several appends,
    where a timer would cost a wake of its own for every lone one)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    fd = ino.fileno()
    held: list[asyncio.TimerHandle] = []  # the timer that ends the hold, while held
    last_read = float("-inf")

    def readable() -> None:
        nonlocal last_read
        if ended.done():
            return
        try:
            events = ino.read(timeout=0)
        except OSError as exc:
            ended.set_exception(exc)
            return
        if not events:
            return
        if on_events(events):
            ended.set_result(None)
            return
        now = loop.time()
        if now - last_read < hold_s and not held:
            loop.remove_reader(fd)
            held.append(loop.call_later(hold_s, release))
        last_read = now

    def release() -> None:
        held.clear()
        if not ended.done():
            loop.add_reader(fd, readable)
            readable()

    def drain() -> None:
        if not held:
            readable()

    stopping: asyncio.Future[None] = asyncio.ensure_future(_stopped(stop))
    loop.add_reader(fd, readable)
    try:
        if live is not None:
            live(drain)
        await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for timer in held:
            timer.cancel()
        loop.remove_reader(fd)
        stopping.cancel()
    if ended.done():
        ended.result()  # raises what the read raised
    else:
        ended.cancel()


async def watch_directory(
    path: Path,
    on_changes: OnChanges,
    live: Callable[[Callable[[], None]], None],
    stop: asyncio.Event,
    hold_s: float = 0.0,
) -> None:
    """Watch ``path`` until it is deleted, moved away or unmounted, or ``stop`` is set.

    ``live(drain)`` is called once the watch is established (what happened before was not
    reported); ``drain()`` hands over at once what is queued. ``on_changes`` gets each
    read's changes, on the loop. Raises OSError when the watch cannot be made (a missing
    directory, inotify's limits) or fails. ``hold_s``: see :func:`_read_until`.
    """
    where = str(path)
    with INotify(nonblocking=True) as ino:
        ino.add_watch(where, DIRECTORY_MASK)

        def on_events(events: list[tuple[int, int, int, str]]) -> bool:
            changes, overflowed, gone = _changes(events, where)
            if changes or overflowed:
                on_changes(changes, overflowed)
            return gone

        await _read_until(ino, stop, on_events, live, hold_s)


def is_directory(path: Path) -> bool:
    """One stat on the loop, as the watch's own lookup of the path is (both are cheap unless
    the filesystem hangs, and then the reader thread is stuck first)."""
    return path.is_dir()


async def wait_for_directory(path: Path, stop: asyncio.Event, timeout_s: float) -> None:
    """Return once ``path`` exists (a watch on its parent says when it is made or moved in),
    ``stop`` is set, or after ``timeout_s`` (a parent that cannot be watched: at once if
    inotify cannot watch it, so the caller's timer decides)."""

    async def parent_watch() -> None:
        with INotify(nonblocking=True) as ino:
            ino.add_watch(str(path.parent), PARENT_MASK)
            if is_directory(path):  # made between the caller's look and the watch
                return

            def on_events(events: list[tuple[int, int, int, str]]) -> bool:
                return any(name == path.name or mask & GONE for _, mask, _, name in events)

            await _read_until(ino, stop, on_events)

    # asyncio.timeout, not wait_for (which on 3.11 can swallow a cancel).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            try:
                await parent_watch()
            except OSError:  # the parent is missing too, or cannot be watched: the timer
                await stop.wait()
