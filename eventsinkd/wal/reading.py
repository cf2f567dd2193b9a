"""What every cursor reading one WAL directory shares.

Each sink reads the WAL through its own :class:`~eventsinkd.wal.scanner.WalScanner`
(its cursor), so a slow sink falls behind alone. Reading must still not cost
N times as much while the sinks keep up, so the cursors share:

* one watcher (:class:`Waker`) and one directory listing (:class:`SegmentDirectory`),
  kept up to date from the watcher's events;
* one set of reader counters (:class:`ReaderStats`): a line is counted, and a
  rejected line warned about, by the first cursor that reads it. :class:`Coverage`
  knows which stretches of the WAL some cursor has read in this process;
* the decoded lines: the first cursor to read a line parses it (CRC, HMAC, zstd,
  JSON) and leaves the result in :class:`ParseCache`, keyed by the line's bytes
  (so a rewrite can never serve a stale result); cursors close behind it only
  look it up. With one cursor nothing is cached.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from eventsinkd.common.logs import RateLimitedLog
from eventsinkd.wal.directory import SegmentDirectory
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, Reject
from eventsinkd.wal.thread import ReaderThread
from eventsinkd.wal.watch import Waker

log = logging.getLogger("eventsinkd.wal.scanner")

Key = tuple[str, int]  # Position.key(): (segment, lines consumed)
Identity = tuple[int, int]  # (st_dev, st_ino) of an open segment
MAX_CLOSED_RUNS = 64


@dataclass(slots=True)
class ReaderStats:
    lines: int = 0
    entries: Counter[str] = field(default_factory=Counter)  # by entry_type ("" = data)
    rejected: Counter[str] = field(default_factory=Counter)  # by Reject value
    duplicates: int = 0
    rewrites: int = 0
    truncations: int = 0
    vanished: int = 0
    segments: int = 0


class Coverage:
    """The stretches of the WAL read so far, as runs ``(start, end]`` of position keys.

    Each cursor's reading is contiguous from where it started (or was moved
    to), so its run is ``[where it began, where it is]``; a cursor that stops
    or jumps leaves its run behind as a closed one.
    """

    def __init__(self) -> None:
        self._live: dict[int, list[Key]] = {}
        self._closed: list[tuple[Key, Key]] = []

    def begin(self, owner: object, at: Key) -> None:
        self.end(owner)
        self._live[id(owner)] = [at, at]

    def end(self, owner: object) -> None:
        run = self._live.pop(id(owner), None)
        if run is None or run[0] >= run[1]:
            return
        start, end = run
        keep = []
        for s, e in self._closed:
            if s <= end and start <= e:  # overlapping or touching: merge
                start, end = min(s, start), max(e, end)
            else:
                keep.append((s, e))
        keep.append((start, end))
        keep.sort()
        self._closed = keep[-MAX_CLOSED_RUNS:]

    def claim(self, owner: object, start: Key, end: Key) -> list[tuple[Key, Key]]:
        """``owner`` read the lines in ``(start, end]``: the other runs overlapping them.

        An empty list means every line is new to this process.
        """
        me = id(owner)
        run = self._live.get(me)
        # Moving on to a later segment's first line is still contiguous reading:
        # the scanner only skips segments without lines.
        if run is None or not (run[1] == start or (start[1] == 0 and start[0] > run[1][0])):
            self.begin(owner, start)
            run = self._live[me]
        run[1] = end
        if end <= start:
            return []
        found = [(s, e) for s, e in self._closed if s < end and e > start]
        for other, (s, e) in self._live.items():
            if other != me and s < end and e > start:
                found.append((s, e))
        return found


class ParseCache:
    """Recently parsed lines by their bytes, so cursors close behind the first parse nothing."""

    # Cursors that keep up are a batch or two (256 lines each) behind the first.
    def __init__(self, max_lines: int = 2048, max_bytes: int = 4 << 20) -> None:
        self._results: dict[bytes, Entry | Reject] = {}
        self._order: deque[bytes] = deque()
        self._bytes = 0
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self.max_line_bytes = max_bytes // 64  # big lines are rare: not worth the memory

    def get(self, raw: bytes) -> Entry | Reject | None:
        return self._results.get(raw)

    def put(self, raw: bytes, result: Entry | Reject) -> None:
        if len(raw) > self.max_line_bytes or raw in self._results:
            return
        self._results[raw] = result
        self._order.append(raw)
        self._bytes += len(raw)
        while len(self._order) > self._max_lines or self._bytes > self._max_bytes:
            old = self._order.popleft()
            del self._results[old]
            self._bytes -= len(old)


class SharedReading:
    """One WAL directory as every cursor reads it (see the module docstring)."""

    def __init__(
        self,
        wal_dir: Path,
        parser: LineParser,
        *,
        poll_interval_s: float = 0.5,
        force_polling: bool = False,
    ) -> None:
        self.wal_dir = wal_dir
        self.parser = parser
        self.directory = SegmentDirectory(wal_dir, poll_interval_s=poll_interval_s)
        self.waker = Waker(
            wal_dir,
            poll_interval_s=poll_interval_s,
            force_polling=force_polling,
            directory=self.directory,
        )
        self.stats = ReaderStats()
        self.coverage = Coverage()
        self.cache = ParseCache()
        self.rlog = RateLimitedLog(log)
        self.cursors = 0  # scanners open on this directory
        # Reports made once per file: forgotten when no cursor holds the file open any
        # more, because only then can its inode number come back (see nexus-wal.md).
        self._held: Counter[Identity] = Counter()
        self._reported: dict[Identity, set[Hashable]] = {}
        # Every cursor's steps run there, one at a time, or on the event loop while the
        # thread has nothing to do (see may_step_on_loop): what is above is touched by one
        # of the two at a time.
        self.thread = ReaderThread(f"wal-reader {wal_dir.name}")
        self.on_loop = False  # a step is running on the event loop
        self.loop_steps = True  # False once a step on the loop was slow: all in the thread

    def may_step_on_loop(self) -> bool:
        """True if a cursor at the end of the WAL may take its next step on the event loop:
        the directory is on a local filesystem, watched (the step will not list it) and
        listed, and the thread is idle (so the step cannot overlap one there)."""
        d = self.directory
        return (
            self.loop_steps and d.local and d.watched and not d.must_list and not self.thread.busy
        )

    def close(self) -> None:
        """Stop the reader thread (once the cursors have stopped)."""
        self.thread.stop()

    @property
    def shared(self) -> bool:
        """True when more than one cursor reads: then parse results are worth caching."""
        return self.cursors > 1

    def hold(self, identity: Identity) -> None:
        self._held[identity] += 1

    def release(self, identity: Identity) -> None:
        self._held[identity] -= 1
        if self._held[identity] <= 0:
            del self._held[identity]
            self._reported.pop(identity, None)

    def first_time(self, identity: Identity, what: Hashable) -> bool:
        """True the first time ``what`` is reported about the open file ``identity``."""
        seen = self._reported.setdefault(identity, set())
        if what in seen:
            return False
        seen.add(what)
        return True
