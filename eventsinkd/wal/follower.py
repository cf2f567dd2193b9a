"""The async stream of WAL batches: a :class:`WalScanner` woken by the shared :class:`Waker`.

The scanner's steps (file reads) run in the WAL directory's reader thread
(:mod:`eventsinkd.wal.thread`): a read that stalls holds up only reading, never
the delivery of what is queued or the admin endpoints. Except at the end of the
WAL: there a step reads what Nexus has just written, from the page cache of a
local filesystem, and handing it to the thread and back would cost more than the
read (at Nexus's usual rates, most of the daemon's CPU; issue 25). So a cursor
whose last step reached the end takes its next one on the event loop when
:meth:`SharedReading.may_step_on_loop` allows it (a local, watched, listed
directory and an idle thread). A file that could block the open (not a regular
file) sends that step back to the thread (:class:`WouldBlock`); a step on the
loop that takes longer than ``SLOW_STEP_S`` (a disk that stalls) sends every
later step there, and says so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from eventsinkd.wal.batches import Batch
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.reading import SharedReading
from eventsinkd.wal.scanner import StartAt, WalScanner
from eventsinkd.wal.segments import WouldBlock
from eventsinkd.wal.statuses import StatusWatch

log = logging.getLogger(__name__)

# A cursor catching up on a backlog (CATCHING_UP_AFTER batches in a row without
# reaching the end) gives way to the other cursors when the rest of the loop has work
# (the turn it yields takes longer than BUSY_TURN_S): it pauses CATCH_UP_GIVE_WAY times
# as long as its last batch took (BENCHMARKS.md, cursors). Alone it does not: the work
# is its own sink's, which the pause would only delay. (Whether the others are catching
# up too cannot tell: a tailing cursor starved by a catch-up falls behind and looks it.)
CATCHING_UP_AFTER = 4
BUSY_TURN_S = 0.0002
CATCH_UP_GIVE_WAY = 1.0
BACKLOG_EVERY_S = 0.5  # how often a busy reader updates its backlog figure
WOULD_BLOCK: Literal["would block"] = "would block"
SLOW_STEP_S = 1.0  # a step on the loop this slow moves every later one to the thread


class WalFollower:
    """Yields :class:`Batch` es in WAL order until stopped (or, without ``follow``, the end).

    Given a :class:`SharedReading`, the follower is one cursor among several and
    the watcher belongs to whoever made it; otherwise the follower has its own.
    """

    def __init__(
        self,
        wal_dir: Path,
        parser: LineParser,
        start: Position | StartAt = "end",
        *,
        follow: bool = True,
        poll_interval_s: float = 0.5,
        force_polling: bool = False,
        batch_lines: int = 256,
        reading: SharedReading | None = None,
        statuses: StatusWatch | None = None,
    ) -> None:
        self._owns_watcher = reading is None
        if reading is None:
            reading = SharedReading(
                wal_dir, parser, poll_interval_s=poll_interval_s, force_polling=force_polling
            )
        self.scanner = WalScanner(
            wal_dir, parser, start, batch_lines=batch_lines, reading=reading, statuses=statuses
        )
        self.reading = reading
        self.waker = reading.waker
        self.follow = follow
        self._stopped = asyncio.Event()
        # Held by a step in the reader thread; the loop's look at the backlog does not wait.
        self._stepping = threading.Lock()
        self._backlog = 0
        self._backlog_due = 0.0  # when the reader next updates it (time.monotonic())

    @property
    def position(self) -> Position:
        """Where reading has got to (not what has been acknowledged)."""
        return self.scanner.position

    @property
    def ready(self) -> bool:
        return self.scanner.ready and not self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()
        self.waker.notify()

    def backlog_bytes(self) -> int:
        """The scanner's :meth:`~WalScanner.backlog_bytes`; while it is reading, the figure
        its reads last left (a stalled read must not stall /metrics)."""
        if self._stepping.acquire(blocking=False):
            try:
                self._backlog = self.scanner.backlog_bytes()
            finally:
                self._stepping.release()
        return self._backlog

    def _step(self) -> Batch | None:
        with self._stepping:
            batch = self.scanner.step()
            # A reader that never stops (a catch-up) would hold the lock at every look from
            # /metrics: it updates the figure itself, now and then (it stats a few files).
            now = time.monotonic()
            if now >= self._backlog_due:
                self._backlog_due = now + BACKLOG_EVERY_S
                self._backlog = self.scanner.backlog_bytes()
            return batch

    def _read_everything(self, seen: int) -> bool:
        """True if the last step read all there is and no change was reported since it
        began: a step now would find nothing (with a trusted watch, which reports every
        write)."""
        return (
            self.follow
            and self.waker.generation == seen
            and not self._stopped.is_set()
            # a watched, listed, local directory (watched: a live and trusted watch), and
            # an idle thread: what caught_up looks at, it looks at on the loop
            and self.reading.may_step_on_loop()
            and self.scanner.caught_up
        )

    def _step_on_loop(self) -> Batch | Literal["would block"] | None:
        """:meth:`_step` here, on the event loop; ``WOULD_BLOCK`` if it must be made in the
        thread."""
        reading = self.reading
        reading.on_loop = True
        started = time.monotonic()
        try:
            return self._step()
        except WouldBlock:
            return WOULD_BLOCK
        finally:
            reading.on_loop = False
            took = time.monotonic() - started
            if took > SLOW_STEP_S and reading.loop_steps:
                reading.loop_steps = False
                log.warning(
                    "a read of the WAL in %s took %.1fs on the event loop: from now on every "
                    "read is made in the reader thread",
                    self.scanner.wal_dir,
                    took,
                )

    def _close(self) -> None:
        with self._stepping:
            self.scanner.close()

    async def __aiter__(self) -> AsyncIterator[Batch]:
        if self.follow and self._owns_watcher:
            self.waker.start()
        streak = 0  # batches in a row without reaching the end
        thread = self.reading.thread
        timed_out = False  # the last wait ended without a change reported
        tailing = False  # the last step reached the end of what was written
        watch_statuses = self.scanner.statuses is not None  # their look behind may block
        try:
            while not self._stopped.is_set():
                seen = self.waker.generation
                started = time.monotonic()
                stepped: Batch | Literal["would block"] | None = WOULD_BLOCK
                if tailing and not watch_statuses and self.reading.may_step_on_loop():
                    stepped = self._step_on_loop()
                batch = await thread.run(self._step) if isinstance(stepped, str) else stepped
                # At the end of what is written, the next read is a tail, from the page
                # cache. A backlog is read in the thread: also, two threads reading big
                # chunks would each keep a malloc arena of them (drop mode's peak RSS over
                # a 1,000,000-entry backlog was +7 MiB with its segments' first reads here).
                tailing = batch is None or self.scanner.read_to_end
                if batch is not None:
                    if timed_out and batch.records:
                        self.waker.missed()
                    timed_out = False
                    streak += 1
                    yield batch
                    if not (tailing and self._read_everything(seen)):
                        # Catching up is CPU-bound: let the rest of the loop run between
                        # batches. If it has work (the turn it got took a while: other
                        # sinks delivering), one turn is not enough - a delivery takes
                        # several, each waiting for a whole batch here - so give way in
                        # proportion to the batch just done, if there are other cursors.
                        busy = time.monotonic() - started
                        turn = time.monotonic()
                        await asyncio.sleep(0)
                        if (
                            time.monotonic() - turn > BUSY_TURN_S
                            and streak >= CATCHING_UP_AFTER
                            and self.reading.cursors > 1
                        ):
                            await asyncio.sleep(busy * CATCH_UP_GIVE_WAY)
                        continue
                    # Nothing more to read until a change is reported: wait now, as after
                    # the step that would find nothing (and say so).
                    self.scanner.at_end = True
                streak = 0
                if not self.follow and self.scanner.at_end:
                    return
                # A WAL that cannot be read is looked at every poll interval: its coming
                # back (permissions given back, say) is not a change a watch reports.
                await self.waker.wait(seen, poll=self.scanner.error is not None)
                timed_out = self.waker.generation == seen
        finally:
            # After any step still running (a stalled read may never end): not waited for.
            thread.submit(self._close)
            if self._owns_watcher:
                await self.waker.stop()
                self.reading.close()
