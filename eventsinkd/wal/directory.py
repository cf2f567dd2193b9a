"""The WAL directory as the reader sees it: segment names in order, and which later one holds data.

Following a busy WAL asks two questions after almost every append: "which
segments exist?" and "does any segment after the current one hold data yet?".
Nexus never deletes segments and its group commit creates a new, mostly empty,
file for many batches (about 90 files/s at 500 appends/s), so a directory holds
millions of files after a day. Answered by listing the directory and stat-ing
the later segments, both questions cost time in proportion to the files: they
must not be asked of the filesystem again and again.

* The names are listed once, at start. After that the watcher's events keep
  them up to date (:meth:`changed`: a name added or deleted is looked at with
  one stat, which also tells whether it holds data). A listing is made again
  only when a watch (re)starts (what happened before it was not reported) and,
  without a watcher, every ``poll_interval_s`` while the directory's mtime
  says it changed (a big directory not more often than ``LIST_COST_FACTOR``
  times the last listing took, so that it costs a bounded share of a core). With a
  watcher, :meth:`survey` lists in the background now and then as a safety net
  for lost events, and hands what differs over as changes.
* Which segments may hold data is remembered: a segment seen empty is left out
  of the later-data check until an event says it changed (without a watcher, the
  segments after the one asked about are looked at again every
  ``poll_interval_s``, and the newest one every time: where Nexus's next write
  lands). The check stats at most ``SCAN_BUDGET`` segments per call, so that a
  long run of empty segments is crossed in steps (:data:`Scan.MORE`).

Threads: the watcher (on the event loop) only appends to a thread-safe inbox;
the scanners' steps apply it under a lock, and own the lists. ``size_after`` (for
lag figures, from the event loop) reads without the lock: a concurrent change can
make one figure off by a segment.
"""

from __future__ import annotations

import bisect
import enum
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from watchfiles import Change

from eventsinkd.wal.filesystem import is_local
from eventsinkd.wal.segments import SEGMENT_RE, list_segments

SCAN_BUDGET = 10_000  # stats per later-data check, at most (~25 ms)
LOOK_BACK = 10_000  # stats to find the last segment with data before a position, at most
SIZE_STATS = 10_000  # stats for one lag figure, at most
LIST_COST_FACTOR = 50  # without a watcher, listing takes at most 1/50 of the time...
CHEAP_LIST_S = 0.002  # ...when it takes longer than this (some 1,000 files)
SETTLED_S = 2.0  # mtime granularity to allow for (coarse on some filesystems)
BULK = 64  # changes of more names than this rebuild a list (one pass) instead of shifting it

Ident = tuple[int, int, int]  # st_dev, st_ino, st_mtime_ns of the directory


class Scan(enum.Enum):
    MORE = "more"  # the check ran out of budget: ask again (no need to wait for a change)


class SegmentDirectory:
    def __init__(self, path: Path, *, poll_interval_s: float = 0.5) -> None:
        self.path = path
        self.poll_interval_s = poll_interval_s
        self.listings = 0  # listing changes: each may have brought files renamed in
        self.lists = 0  # listings made (by refresh; surveys not counted)
        self.watched = False  # a watcher reports changes (set by the Waker)
        self.stale_watch = False  # the directory was replaced: the watch must start again
        self.list_cost_s = 0.0  # how long the last listing took
        self.local = False  # on a local filesystem, as of the last listing
        self._prefix = f"{path}{os.sep}"  # stat by str: less than half the time of a Path
        self._lock = threading.Lock()
        self._inbox: deque[list[tuple[int, str]]] = deque()  # changes, from any thread
        self._names: list[str] = []  # every segment, in WAL order
        self._maybe: list[str] = []  # the names not known to be empty, in WAL order
        self._data: set[str] = set()  # names known to hold data
        self._listed = False
        self._listed_at = float("-inf")  # time.monotonic() of the last listing (or check)
        self._ident: Ident | None = None  # the directory's, before the last listing
        self._watched_ident: tuple[int, int] | None = None  # the one watched, if known
        self._settled = False  # the last listing was made well after the directory's mtime
        self._swept_at = float("-inf")
        self._watch_epoch = 0  # watches established so far
        self._listed_epoch = -1  # _watch_epoch when the last listing began

    # -- what the watcher tells it (event loop) ---------------------------------------

    def watch_started(self, on: tuple[int, int] | None = None) -> None:
        """A watch is live: from now on every change is reported. What came before was not,
        so the next :meth:`refresh` lists (unless it has listed since). ``on``: the
        directory watched (``st_dev``, ``st_ino``), if the watcher knows it."""
        self._watch_epoch += 1
        self._watched_ident = on
        self.stale_watch = False
        self.watched = True

    def watch_stopped(self) -> None:
        self.watched = False

    def list_again(self) -> None:
        """Changes were lost (the watch's queue overflowed): the next :meth:`refresh` lists."""
        self._watch_epoch += 1

    @property
    def must_list(self) -> bool:
        """True if the next :meth:`refresh` lists the directory (which can take seconds)."""
        return not self._listed or self._listed_epoch < self._watch_epoch

    def changed(self, changes: Iterable[tuple[int, str]]) -> bool:
        """Hand over a watcher's ``(Change, path)`` set; applied by the next :meth:`refresh`.
        True if a reader should look: a segment written to, deleted (a reader holding it
        open lets it go: until then the kernel does not report the directory's own
        removal), replaced, or added with data; not for a new segment added empty, as
        Nexus pre-creates them, nor for other files, such as Nexus's temporary ones."""
        names = [(c, os.path.basename(p)) for c, p in changes]
        names = [(c, n) for c, n in names if SEGMENT_RE.fullmatch(n)]
        if not names:
            return False
        self._inbox.append(names)
        added = int(Change.added)
        if not self.local or any(c != added for c, _ in names):
            return True  # written to, deleted (or not looked at here: a stat could block)
        if not self._lock.acquire(blocking=False):
            return True  # a listing is being made: look afterwards
        try:
            if any(self._index(self._names, n) is not None for _, n in names):
                return True  # a file renamed over a segment: a rewrite
        finally:
            self._lock.release()
        return any(self._size(n) for _, n in names)  # renamed or linked in with data

    def survey(self) -> bool:
        """List the directory in the calling thread and hand what differs from the names
        known over as changes (a safety net for lost events); True if anything differs.
        Raises OSError when the directory cannot be read.

        Python loops, no sort: the other threads get their turns (a sort of a million
        names would hold the GIL for half a second). The names known are read while the
        scanners' thread may change them: a name seen twice or missed only makes a change
        that the file then contradicts (changes are decided by the files)."""
        started = time.monotonic()
        listed: set[str] = set()
        with os.scandir(self.path) as entries:
            for entry in entries:
                if SEGMENT_RE.fullmatch(entry.name):
                    listed.add(entry.name)
        self.list_cost_s = time.monotonic() - started
        diff: list[tuple[int, str]] = []
        for name in self._names:
            if name in listed:
                listed.discard(name)
            else:
                diff.append((int(Change.deleted), name))
        diff += [(int(Change.added), name) for name in listed]
        if diff:
            self._inbox.append(diff)
        return bool(diff)

    # -- what the scanners ask (their thread) -----------------------------------------

    def refresh(self) -> int:
        """Bring the names up to date; how many segments there are. Raises OSError when the
        directory cannot be read."""
        with self._lock:
            now = time.monotonic()
            ident = self._directory_ident()  # one stat: is it there, is it the same one
            if self._ident is not None and ident[:2] != self._ident[:2]:
                # Replaced by another directory: a watch is on the old one, unless the
                # watcher said it watches this one (made after the replacement).
                if self._watched_ident != ident[:2]:
                    self.stale_watch, self.watched = True, False
                self._listed = False
            if self.must_list:
                self._list(now, ident)
            elif not self.watched:
                wait = self.poll_interval_s
                if self.list_cost_s > CHEAP_LIST_S:  # a big directory
                    wait = max(wait, LIST_COST_FACTOR * self.list_cost_s)
                if now - self._listed_at < wait:
                    pass
                elif ident != self._ident or not self._settled:
                    self._list(now, ident)
                else:
                    self._listed_at = now  # unchanged since a listing made well after its mtime
            self._apply_inbox()
            return len(self._names)

    def exists(self, name: str) -> bool:
        with self._lock:
            return self._index(self._names, name) is not None

    def first_with_data_after(self, after: str) -> str | Literal[Scan.MORE] | None:
        """The first segment after ``after`` that holds data; None if there is none (yet),
        :data:`Scan.MORE` if that is not known yet (ask again)."""
        with self._lock:
            names, maybe = self._names, self._maybe
            if not self.watched and time.monotonic() - self._swept_at >= self.poll_interval_s:
                # No event says that an empty segment was written to: look at the next ones
                # again (Nexus's pre-created segments are there).
                self._swept_at = time.monotonic()
                first = bisect.bisect_right(names, after)
                later = names[first : first + SCAN_BUDGET]
                if later:
                    start = bisect.bisect_right(maybe, after)
                    maybe[start : bisect.bisect_right(maybe, later[-1])] = later
            found = self._scan_after(after)
            if found is None and not self.watched and names and names[-1] > after:
                newest = names[-1]  # where Nexus's next write lands (after a restart, say)
                if self._size(newest):
                    self._data.add(newest)
                    bisect.insort(maybe, newest)
                    return newest
            return found

    def nothing_after(self, name: str) -> bool:
        """True if no segment after ``name`` may hold data, with the changes reported so far
        applied (a stat each), and no listing due: a reader at the end of ``name`` has
        nothing to read until the next change."""
        with self._lock:
            if not self.watched or self.must_list:
                return False
            self._apply_inbox()
            maybe = self._maybe
            return len(maybe) == bisect.bisect_right(maybe, name)

    def last_with_data(self) -> str | None:
        """The newest segment that holds data (where reading "at the end" starts)."""
        with self._lock:
            return self._last_with_data(len(self._maybe), None)

    def last_with_data_before(self, name: str) -> str | None:
        """The last segment before ``name`` that holds data, looking at most ``LOOK_BACK``
        segments back (None: none found)."""
        with self._lock:
            return self._last_with_data(bisect.bisect_left(self._maybe, name), LOOK_BACK)

    # -- for lag figures (any thread) ---------------------------------------------------

    def size_after(self, after: str) -> int:
        """Total bytes of the segments after ``after`` that may hold data (for lag figures;
        at most ``SIZE_STATS`` segments are looked at)."""
        maybe = self._maybe
        start = bisect.bisect_right(maybe, after)
        later = maybe[start : start + SIZE_STATS]
        return sum(self._size(name) or 0 for name in later)

    # -- helpers (under the lock) --------------------------------------------------------

    def _directory_ident(self) -> Ident:
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino, st.st_mtime_ns)

    def _list(self, now: float, ident: Ident) -> None:
        """List the directory (whose ``ident`` was taken just before: a change during the
        listing shows at the next look); every name is then of unknown size again."""
        epoch = self._watch_epoch
        wall = time.time()
        names = list_segments(self.path)
        self.list_cost_s = time.monotonic() - now
        self.local = is_local(self.path)
        self._names = names
        self._maybe = list(names)
        self._data = {n for n in self._data if self._index(names, n) is not None}
        self._ident = ident
        self._settled = wall - ident[2] / 1e9 >= SETTLED_S
        self._listed = True
        self._listed_at = now
        self._listed_epoch = epoch
        self._swept_at = float("-inf")
        self.listings += 1
        self.lists += 1

    def _apply_inbox(self) -> None:
        """Apply the watcher's changes: each name added or deleted is looked at (the set of
        changes has no order: the file says what came last); a modified one may hold data."""
        kinds: dict[str, set[int]] = {}
        while self._inbox:
            for change, name in self._inbox.popleft():
                kinds.setdefault(name, set()).add(change)
        if not kinds:
            return
        added: list[str] = []
        gone: list[str] = []
        data: list[str] = []
        empty: list[str] = []
        renamed_in = False
        modified = {int(Change.modified)}
        for name, seen in kinds.items():
            if seen == modified and name in self._data:
                continue  # written to again: it held data and still does (no stat)
            size = self._size(name)
            known = self._index(self._names, name) is not None
            if size is None:
                if known:
                    gone.append(name)
                continue
            if not known:
                added.append(name)
            elif int(Change.added) in seen:
                renamed_in = True  # a rewrite: a file renamed over the segment
            (data if size else empty).append(name)
        self._forget(gone)
        _insert(self._names, added)
        self._data.update(data)
        self._data.difference_update(empty)
        _insert(self._maybe, [n for n in data if self._index(self._maybe, n) is None])
        if self.watched:  # empty now, and a write to it would be reported
            _remove(self._maybe, [n for n in empty if self._index(self._maybe, n) is not None])
        if renamed_in:
            self.listings += 1

    def _scan_after(self, after: str) -> str | Literal[Scan.MORE] | None:
        maybe = self._maybe
        start = end = bisect.bisect_right(maybe, after)
        found: str | Literal[Scan.MORE] | None = None
        gone: list[str] = []
        while end < len(maybe):
            name = maybe[end]
            if name not in self._data and end - start >= SCAN_BUDGET:
                found = Scan.MORE
                break
            if self._holds_data(name, gone):
                found = name
                break
            end += 1
        del maybe[start:end]  # all empty (or gone) up to the one found
        self._forget(gone)
        return found

    def _last_with_data(self, end: int, budget: int | None) -> str | None:
        maybe = self._maybe
        gone: list[str] = []
        found = None
        stop = -1 if budget is None else max(-1, end - budget - 1)
        i = end - 1
        while i > stop:
            name = maybe[i]
            if self._holds_data(name, gone):
                found = name
                break
            i -= 1
        del maybe[i + 1 : end]
        self._forget(gone)
        return found

    def _holds_data(self, name: str, gone: list[str]) -> bool:
        """True if ``name`` is known to hold data or its size says so; a vanished one joins
        ``gone``."""
        if name in self._data:
            return True
        size = self._size(name)
        if size:
            self._data.add(name)
            return True
        if size is None:
            gone.append(name)
        return False

    def _forget(self, names: list[str]) -> None:
        """``names`` are gone from the directory."""
        if names:
            _remove(self._names, names)
            _remove(self._maybe, names)
            self._data.difference_update(names)
            self.listings += 1

    def _size(self, name: str) -> int | None:
        try:
            return os.stat(self._prefix + name).st_size
        except FileNotFoundError:
            return None

    @staticmethod
    def _index(names: list[str], name: str) -> int | None:
        i = bisect.bisect_left(names, name)
        return i if i < len(names) and names[i] == name else None


def _insert(names: list[str], new: list[str]) -> None:
    """Put ``new`` (not in ``names`` yet) into the sorted ``names``, in place."""
    if len(new) <= BULK:
        for name in new:
            bisect.insort(names, name)
    else:  # one sort of a sorted run and a tail, not one shift of the list per name
        names.extend(new)
        names.sort()


def _remove(names: list[str], old: list[str]) -> None:
    """Take ``old`` out of the sorted ``names``, in place (names not there are ignored)."""
    if len(old) <= BULK:
        for name in old:
            i = bisect.bisect_left(names, name)
            if i < len(names) and names[i] == name:
                del names[i]
    else:
        drop = set(old)
        names[:] = [n for n in names if n not in drop]
