"""The thread that reads a WAL directory's files, so a stalled read never stalls the loop.

Reading is blocking file I/O: on a slow or hung network filesystem one ``pread``
can take seconds or never return. The cursors' steps therefore run in one
thread per WAL directory, one at a time and in the order asked, while the event
loop goes on delivering what is queued and answering the admin endpoints. (A
step at the end of the WAL on a local filesystem runs on the loop instead, and
only while :attr:`ReaderThread.busy` is False: what the cursors share,
:class:`~eventsinkd.wal.reading.SharedReading`, is touched by one at a time;
:mod:`eventsinkd.wal.follower`.)

A ``concurrent.futures`` pool would do the same, but its threads are joined at
interpreter exit: a read that never returns would keep a stopping daemon alive.
This thread is a daemon thread, and nothing waits for a job it has not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "asyncio.Future[Any] | None", "asyncio.AbstractEventLoop | None"]


def _settle(fut: asyncio.Future[Any] | None, result: Any, exc: BaseException | None) -> None:
    if fut is None or fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


PR_SET_NAME = 15


def _name_os_thread(name: str) -> None:
    """Give the OS thread the name too (``top -H``, ``/proc/<pid>/task/*/comm``): Python 3.11
    names only its own object. Linux only; elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class ReaderThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._pending = 0  # jobs given and not finished (counted on the event loop)

    @property
    def busy(self) -> bool:
        """True while a job given from the event loop is queued or running."""
        return self._pending > 0

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the thread; its result (or exception) here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._put((fn, fut, loop))
        return await fut

    def submit(self, fn: Callable[[], object]) -> None:
        """``fn()`` in the thread, after what is already asked; nobody waits for it.
        Once the thread is stopped, here and now (nothing else reads any more)."""
        if self._stopped:
            fn()
        else:
            self._put((fn, None, asyncio.get_running_loop()))

    def stop(self) -> None:
        """End the thread once it has done what it was given; no more jobs after that."""
        self._stopped = True
        if self._thread is not None:
            self._jobs.put(None)

    def _put(self, job: _Job) -> None:
        if self._stopped:
            raise RuntimeError(f"{self.name}: the reader thread was stopped")
        if job[2] is not None:
            self._pending += 1  # on the loop; counted down there once the job is done
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _serve(self) -> None:
        _name_os_thread(self.name)
        while (job := self._jobs.get()) is not None:
            fn, fut, loop = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:
                error = exc
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(self._done, fut, result, error)

    def _done(
        self, fut: asyncio.Future[Any] | None, result: Any, exc: BaseException | None
    ) -> None:
        self._pending -= 1
        _settle(fut, result, exc)
