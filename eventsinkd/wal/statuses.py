"""Status events: the entries a cursor read as PENDING, and when Nexus marks them.

Nexus records what became of a memory by rewriting its entry's ``status`` in
place: PENDING becomes DELIVERED (stored in its database) or PERMANENT_FAILURE
(given up on); see nexus-wal.md. A cursor that produces status events
(``events.types``) keeps a :class:`StatusWatch`: for each segment, the lines it
read as PENDING. It looks at those lines again only when the segment may have
changed, and parses only them:

* the segment being read: when the scanner follows its rewrite (it reads the
  lines up to where it was anyway);
* a segment behind the cursor: when its (device, inode, size, mtime) differs
  from the file last read. A status rewrite is a new file renamed over the
  segment, which the directory reports (a watcher event for an existing segment, or
  a new listing), so the scanner looks only then, at a cost of one stat per segment
  holding PENDING entries.

An entry read with its final status already gives its status event at once.
Each entry gives at most one: once its final status is seen it is forgotten.
Until its event is finished (in block mode delivered or kept as a dead letter,
in drop mode handed over) it is *unsent*: the saved state keeps it, marked to be
looked at again, so a crash makes the next start send it again (with the same
webhook-id, as memory_written after a crash).

Memory is bounded: at most ``limit`` PENDING lines are remembered; beyond that
the oldest segments' lines are forgotten and counted (``forgotten["limit"]``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from eventsinkd.common.logs import RateLimitedLog
from eventsinkd.wal.directory import SegmentDirectory
from eventsinkd.wal.entry import FINAL_STATUSES, PENDING, Entry
from eventsinkd.wal.lines import Reject
from eventsinkd.wal.segments import SegmentFile

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log, interval_s=60.0)

Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns
Parse = Callable[[bytes], Entry | Reject]
FORMAT_VERSION = 1
# Status changes found in segments behind per step, at most (and one segment's more): Nexus
# catching up after an outage can mark every entry it holds in one go.
MAX_CHANGES = 256
LIMIT = "limit"  # forgotten: more PENDING entries than the limit
GONE = "gone"  # forgotten: the segment or the line is not there any more


def signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class StatusChange(NamedTuple):
    """An entry whose final status was seen: one status event."""

    entry: Entry
    segment: str
    line: int  # 1-based, as Record.line


@dataclass(slots=True)
class _Segment:
    lines: set[int] = field(default_factory=set)  # lines read as PENDING (1-based)
    sig: Signature | None = None  # of the file as last read; None: look at it once behind
    saved: list[list[int]] | None = None  # the lines as runs, for the state file (cached)


class StatusWatch:
    def __init__(self, wants: Callable[[Entry], bool], limit: int) -> None:
        self.wants = wants  # whether the sink takes a status event for this entry
        self.limit = limit
        self.pending = 0  # PENDING lines held
        self.forgotten: Counter[str] = Counter()  # by reason: LIMIT, GONE
        self.version = 0  # changes whenever the saved form would
        self._segments: dict[str, _Segment] = {}
        self._unsent: dict[tuple[str, int], None] = {}  # an ordered set
        self._listing = -1  # the directory listing the segments behind were looked at with
        # The scanner runs in the reader thread, the cursor (finished) and the saving of the
        # cursor (saved) on the event loop: every change, and every look at the whole, holds it.
        self._lock = threading.Lock()

    # -- what the scanner tells it -----------------------------------------------------

    def read(self, entries: Iterable[tuple[Entry, str, int]]) -> list[StatusChange]:
        """Entries read for the first time: remember the PENDING ones; the final ones give
        their status events now."""
        with self._lock:
            return self._read(entries)

    def _read(self, entries: Iterable[tuple[Entry, str, int]]) -> list[StatusChange]:
        changes = []
        for entry, segment, line in entries:
            if not entry.is_data:
                continue
            if entry.status == PENDING:
                if self.wants(entry):
                    self._add(segment, line)
            elif entry.status in FINAL_STATUSES:
                self._discard(segment, line)  # read again after a restart or a rewind
                if self.wants(entry):
                    changes.append(self._changed(entry, segment, line))
        if self.pending > self.limit:
            self._evict()
        return changes

    def lines_in(self, segment: str) -> set[int] | None:
        """The PENDING lines remembered in ``segment``, if any."""
        seg = self._segments.get(segment)
        return seg.lines if seg is not None else None

    def checked(
        self,
        segment: str,
        picked: dict[int, bytes | None],
        upto: int,
        parse: Parse,
        sig: Signature | None = None,
    ) -> list[StatusChange]:
        """``picked`` holds the remembered lines of ``segment`` up to line ``upto`` as it
        reads now (a line missing: the file is shorter); ``sig`` is the file's, when it is
        behind the cursor. Lines after ``upto`` are left as they are."""
        with self._lock:
            return self._checked(segment, picked, upto, parse, sig)

    def _checked(
        self,
        segment: str,
        picked: dict[int, bytes | None],
        upto: int,
        parse: Parse,
        sig: Signature | None,
    ) -> list[StatusChange]:
        seg = self._segments.get(segment)
        if seg is None:
            return []
        changes = []
        for line in sorted(n for n in seg.lines if n <= upto):
            raw = picked.get(line)
            entry = None if raw is None else parse(raw)
            if not isinstance(entry, Entry) or not entry.is_data:
                self._forget(seg, line, GONE)
            elif entry.status in FINAL_STATUSES:
                seg.lines.discard(line)
                self.pending -= 1
                changes.append(self._changed(entry, segment, line))
        if sig is not None:
            seg.sig = sig
        self._touched(segment, seg)
        return changes

    def left(self, segment: str, sig: Signature) -> None:
        """The scanner stopped reading ``segment``, last read as ``sig``."""
        with self._lock:
            seg = self._segments.get(segment)
            if seg is not None and seg.sig != sig:
                seg.sig = sig
                self.version += 1

    def look_behind(
        self, directory: SegmentDirectory, position: str, reading: str | None, parse: Parse
    ) -> list[StatusChange]:
        """Look again at the PENDING lines of the segments the cursor has left (at or before
        ``position``, other than ``reading``, the one it has open) that changed.

        Only when the directory may hold a file renamed in since the last look (a rewrite
        renames a file over its segment: ``directory.listings`` counts those changes), and
        then one stat per segment holding PENDING lines.
        """
        if not self._segments:
            return []
        try:
            directory.refresh()
        except OSError:
            return []  # the scanner reports it
        if directory.listings == self._listing:
            return []
        behind = [
            (name, seg.sig)
            for name, seg in self._segments.items()
            if name <= position and name != reading
        ]
        changes: list[StatusChange] = []
        for name, sig in behind:
            if len(changes) >= MAX_CHANGES:
                return changes  # the rest at the next step: this listing is not done
            try:
                changes += self._look_again(directory.path, name, sig, parse)
            except OSError as exc:  # looked at again with the next listing
                log.warning("cannot look for status changes in %s: %s", name, exc)
        self._listing = directory.listings
        return changes

    def _look_again(
        self, wal_dir: Path, name: str, sig: Signature | None, parse: Parse
    ) -> list[StatusChange]:
        try:
            if sig is not None and signature(os.stat(wal_dir / name)) == sig:
                return []
            seg = SegmentFile(wal_dir, name)
        except FileNotFoundError:
            self._gone(name)
            return []
        try:
            now = signature(seg.stat())
            lines = self.lines_in(name) or set()
            upto = max(lines, default=0)
            _, _, picked = seg.skip_lines(upto, pick=lines)
        finally:
            seg.close()
        return self.checked(name, picked, upto, parse, now)

    def _gone(self, segment: str) -> None:
        with self._lock:
            seg = self._segments.get(segment)
            if seg is None:
                return
            for line in list(seg.lines):
                self._forget(seg, line, GONE)
            self._touched(segment, seg)
        log.info("segment %s is gone: its PENDING entries give no status events", segment)

    # -- what the cursor tells it --------------------------------------------------------

    def finished(self, change: StatusChange) -> None:
        """The status event of ``change`` was handed over (drop mode) or finished (block)."""
        key = (change.segment, change.line)
        with self._lock:
            if key in self._unsent:
                del self._unsent[key]
                self.version += 1

    # -- the saved form --------------------------------------------------------------------

    def saved(self) -> dict[str, Any]:
        """What goes into the cursor's state file. Unsent entries have no signature: the
        next start looks at them again."""
        with self._lock:
            return self._saved()

    def _saved(self) -> dict[str, Any]:
        unsent: dict[str, list[int]] = {}
        for segment, line in self._unsent:
            unsent.setdefault(segment, []).append(line)
        out: dict[str, Any] = {}
        for name in sorted({*self._segments, *unsent}):
            seg = self._segments.get(name)
            extra = unsent.get(name, [])
            if seg is not None and seg.saved is None:
                seg.saved = _runs(seg.lines)
            runs = seg.saved if seg is not None and seg.saved is not None else []
            sig = seg.sig if seg is not None and not extra else None
            out[name] = [list(sig) if sig is not None else None, runs + _runs(extra)]
        return {"version": FORMAT_VERSION, "segments": out}

    def restore(self, doc: object) -> None:
        """Take what :meth:`saved` wrote (every line as PENDING); ValueError if unusable."""
        with self._lock:
            self._restore(doc)

    def _restore(self, doc: object) -> None:
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError("unknown format")
        segments = doc.get("segments")
        if not isinstance(segments, dict):
            raise ValueError("no segments")
        for name, (sig, runs) in sorted(segments.items()):
            lines: set[int] = set()
            for first, last in runs:
                if not 0 < int(first) <= int(last) < int(first) + 2 * self.limit:
                    raise ValueError(f"bad run of lines {first}-{last} in {name}")
                lines.update(range(int(first), int(last) + 1))
            if not lines:
                continue
            seg = self._segments.setdefault(str(name), _Segment())
            seg.sig = None if sig is None else (int(sig[0]), int(sig[1]), int(sig[2]), int(sig[3]))
            self.pending += len(lines - seg.lines)
            seg.lines |= lines
            if self.pending > 2 * self.limit:
                self._evict()
        if self.pending > self.limit:
            self._evict()
        self.version += 1

    # -- helpers -----------------------------------------------------------------------------

    def _changed(self, entry: Entry, segment: str, line: int) -> StatusChange:
        self._unsent[(segment, line)] = None
        self.version += 1
        return StatusChange(entry, segment, line)

    def _add(self, segment: str, line: int) -> None:
        seg = self._segments.get(segment)
        if seg is None:
            seg = self._segments[segment] = _Segment()
        if line not in seg.lines:
            seg.lines.add(line)
            self.pending += 1
            seg.saved = None
            self.version += 1

    def _discard(self, segment: str, line: int) -> None:
        seg = self._segments.get(segment)
        if seg is not None and line in seg.lines:
            seg.lines.discard(line)
            self.pending -= 1
            self._touched(segment, seg)

    def _forget(self, seg: _Segment, line: int, reason: str) -> None:
        seg.lines.discard(line)
        self.pending -= 1
        self.forgotten[reason] += 1

    def _touched(self, segment: str, seg: _Segment) -> None:
        seg.saved = None
        self.version += 1
        if not seg.lines:
            del self._segments[segment]

    def _evict(self) -> None:
        """Forget the oldest segments' PENDING lines until at most ``limit`` are left."""
        evicted = 0
        while self.pending > self.limit and self._segments:
            name = min(self._segments)
            seg = self._segments.pop(name)
            self.pending -= len(seg.lines)
            evicted += len(seg.lines)
        self.forgotten[LIMIT] += evicted
        self.version += 1
        rlog.log(
            logging.WARNING,
            "evicted",
            "more than %d PENDING entries to follow: forgot the oldest %d; their status "
            "events will not be sent (events.pending_limit)",
            self.limit,
            evicted,
        )


def _runs(lines: Iterable[int]) -> list[list[int]]:
    """Sorted line numbers as [first, last] runs (a WAL's PENDING lines are mostly runs)."""
    runs: list[list[int]] = []
    for n in sorted(lines):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return runs
