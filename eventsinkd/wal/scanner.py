"""Turn a WAL directory into batches of entries, each data entry exactly once.

:class:`WalScanner` is synchronous and does one bounded unit of work per
:meth:`step`; :mod:`eventsinkd.wal.follower` drives it from the event loop.

What it must survive (shared/spec/nexus-wal.md):

* appends, with a partial last line (only lines ending in a newline count);
* rotation, and empty segments pre-created ahead of the one being appended
  to: the current segment is finished only once a *later* segment has data,
  and that is checked *before* the read that finds the current one exhausted;
* status rewrites (temp file + rename) of any segment, the one being read
  included: the open descriptor keeps our inode alive, so a different inode
  at the path means a new file, which is reopened and skipped to the same
  line count (byte offsets do not survive a rewrite, line counts do);
* truncation, deleted segments, a missing or unreadable directory;
* the same idempotency key at the end of one segment and the start of the
  next after a crash during rotation (a bounded window of recent keys).

The lines read become records in :mod:`eventsinkd.wal.batches`. Every sink has its
own scanner (its cursor); what the scanners of one WAL directory share - listing,
counters, parsed lines - is in :mod:`eventsinkd.wal.reading`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Literal

from eventsinkd.wal.batches import Batch, Batcher, RecentKeys
from eventsinkd.wal.directory import Scan
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, Reject
from eventsinkd.wal.position import Position, describe
from eventsinkd.wal.reading import ReaderStats, SharedReading
from eventsinkd.wal.segments import SegmentFile
from eventsinkd.wal.statuses import StatusChange, StatusWatch, signature

log = logging.getLogger(__name__)

StartAt = Literal["beginning", "end"]
# Rotation-crash duplicates are at most a group-commit batch (256 lines) apart.
DEDUP_WINDOW = 4096
ALL_LINES = 1 << 62


class WalScanner:
    def __init__(
        self,
        wal_dir: Path,
        parser: LineParser,
        start: Position | StartAt = "end",
        *,
        batch_lines: int = 256,
        dedup_window: int = DEDUP_WINDOW,
        reading: SharedReading | None = None,
        statuses: StatusWatch | None = None,
    ) -> None:
        self.wal_dir = wal_dir
        self.parser = parser
        self.reading = reading or SharedReading(wal_dir, parser)
        self.reading.cursors += 1
        self.stats: ReaderStats = self.reading.stats  # shared: each line is counted once
        self.last_timestamp = ""  # of the last entry this scanner read
        self.position = start if isinstance(start, Position) else Position("", 0)
        self.error: str | None = None  # why the directory cannot be read, if it cannot
        self.at_end = False  # the last step found nothing to read and no later segment
        self.began: Position | None = None  # where reading began (``start`` resolved)
        self._start: Position | StartAt | None = start
        self._batch_lines = batch_lines
        self._dedup_window = dedup_window
        self._recent = RecentKeys(dedup_window)
        self._batcher = Batcher(self, self.reading, parser, batch_lines)
        self._dir = self.reading.directory
        self._cur: SegmentFile | None = None
        self._cur_gone = False
        self._closed = False
        self.statuses = statuses  # the PENDING entries followed for status events, if any
        self._changes: list[StatusChange] = []  # status changes seen, for the next batch

    @property
    def ready(self) -> bool:
        return self.error is None and self._start is None

    def close(self) -> None:
        self._set_cur(None)
        if not self._closed:
            self._closed = True
            self.reading.cursors -= 1
            self.reading.coverage.end(self)

    @property
    def mean_line_bytes(self) -> float:
        """Mean size of the lines read from the current segment (for lag estimates)."""
        cur = self._cur
        return cur.read_off / cur.line if cur is not None and cur.line else 1024.0

    @property
    def read_to_end(self) -> bool:
        """True when the last step read the current segment to its end (a tail, not a
        backlog: what comes next is what is written next)."""
        cur = self._cur
        return cur is not None and cur.read_all

    @property
    def caught_up(self) -> bool:
        """True when the last step read everything there was: the current segment to its
        end, and no later segment may hold data (as far as the directory knows)."""
        return self.read_to_end and self._dir.nothing_after(self.position.segment)

    def backlog_bytes(self) -> int:
        """Bytes in the WAL not yet read: the rest of the current segment and all later ones.

        For metrics and status only (it stats the later segments that may hold data).
        """
        cur = self._cur
        total = 0
        if cur is not None:
            with contextlib.suppress(OSError):
                total += max(0, cur.size() - cur.read_off)
        after = cur.name if cur is not None else self.position.segment
        try:
            return total + self._dir.size_after(after)
        except OSError:
            return total

    # -- one unit of work --------------------------------------------------

    def step(self) -> Batch | None:
        """Read what is new; a Batch when the position moved, None when idle.

        Never raises for trouble with the files: a WAL that cannot be read makes
        the scanner not ready (with the reason in ``error``) until it can.
        """
        try:
            batch = self._step()
        except OSError as exc:
            self._not_ready(self._describe(exc))
            return None
        if self.statuses is not None:
            cur = self._cur
            self._changes += self.statuses.look_behind(
                self._dir,
                self.position.segment,
                cur.name if cur is not None else None,
                self.parser.parse,
            )
        if not self._changes:
            return batch
        changes, self._changes = self._changes, []
        if batch is None:
            return Batch([], self.position, changes)
        batch.statuses = changes
        return batch

    def _step(self) -> Batch | None:
        if self._start is not None or self._cur is None:
            if not self._list():
                return None
            if self._start is not None:
                # Ready (``_start`` None) only once begun: the loop reads ``ready`` while the
                # reader thread begins, and a line appended after "ready" must be read.
                self._begin(self._start)
                self.began = self.position
                self._start = None
                self.reading.coverage.begin(self, self.position.key())
            if self._cur is None:
                nxt = self._dir.first_with_data_after(self.position.segment)
                if nxt is None:
                    self.at_end = True
                    return None
                if nxt is not Scan.MORE:
                    self._open(nxt)
                self.at_end = False
                return Batch([], self.position)
        cur = self._cur
        assert cur is not None
        gone = self._check_identity(cur)
        cur = self._cur
        lines = cur.read_lines(max_lines=self._batch_lines)
        if lines:  # the common case while catching up: no directory listing needed
            self.at_end = False
            return self._emit(cur, lines)
        if not self._list():
            return None
        # The current segment is finished once it is gone or a later segment
        # holds data. Decide that before the final read: Nexus wrote (and
        # fsynced) the last lines here before its first line there.
        nxt = self._dir.first_with_data_after(cur.name)
        if nxt is Scan.MORE:  # a long run of empty segments: crossed a part at a time
            self.at_end = False
            return Batch([], self.position)
        if not gone and nxt is None:
            self.at_end = True
            return None
        lines = cur.read_lines(max_lines=self._batch_lines)
        if lines:
            return self._emit(cur, lines)
        if cur.pending_tail and self.reading.first_time(cur.identity, ("partial", cur.line)):
            self._batcher.reject(Reject.PARTIAL, cur.name, cur.line + 1)
        self._set_cur(None)
        if nxt is None:
            self.at_end = True
            return None
        self._open(nxt)
        return Batch([], self.position)

    # -- helpers -------------------------------------------------------------

    def _segment(self, name: str) -> SegmentFile:
        """``name`` opened; on the event loop, only if opening it cannot block."""
        return SegmentFile(self.wal_dir, name, on_loop=self.reading.on_loop)

    def _list(self) -> bool:
        """Bring the directory's names up to date; False when it cannot be read."""
        try:
            self.stats.segments = self._dir.refresh()
        except OSError as exc:
            self._not_ready(self._describe(exc))
            return False
        if self.error is not None:
            log.info("WAL directory %s is readable again", self.wal_dir)
            self.error = None
        return True

    def _describe(self, exc: OSError) -> str:
        if isinstance(exc, FileNotFoundError) and not self.wal_dir.exists():
            return f"WAL directory {self.wal_dir} does not exist (yet)"
        if isinstance(exc, NotADirectoryError):
            return f"WAL path {self.wal_dir} is not a directory"
        if isinstance(exc, PermissionError):
            return (
                f"WAL directory {self.wal_dir} is not readable by uid {os.getuid()}: "
                "run eventsinkd as the Nexus user or a group with read access"
            )
        return f"cannot read the WAL in {self.wal_dir}: {exc}"

    def _not_ready(self, why: str) -> None:
        if why != self.error:
            log.error("%s; waiting for it", why)
        self.error = why
        self.at_end = True

    def _set_cur(self, seg: SegmentFile | None) -> None:
        """Make ``seg`` the segment being read, closing the previous one."""
        old, self._cur = self._cur, seg
        if seg is not None:
            self.reading.hold(seg.identity)
        if old is not None:
            if self.statuses is not None and (seg is None or seg.name != old.name):
                self.statuses.left(old.name, signature(old.stat()))
            old.close()
            self.reading.release(old.identity)

    def _open(self, name: str, line: int = 0) -> SegmentFile | None:
        try:
            seg = self._segment(name)
        except FileNotFoundError:
            return None
        self._set_cur(seg)
        self._cur_gone = False
        self.position = Position(name, 0)
        if line:
            self._skip_to(seg, line)
        return seg

    def _skip_to(self, seg: SegmentFile, line: int | None, learn: bool = False) -> None:
        """Consume ``line`` lines of ``seg`` (None: all of them) and set the position there."""
        want = ALL_LINES if line is None else line
        pick = self.statuses.lines_in(seg.name) if self.statuses is not None else None
        skipped, recent, picked = seg.skip_lines(
            want, keep=self._dedup_window if learn else 1, pick=pick or frozenset()
        )
        if pick and self.statuses is not None:  # reading the lines anyway: look at them
            self._changes += self.statuses.checked(seg.name, picked, want, self.parser.parse)
        if (
            line is not None
            and skipped < line
            and self.reading.first_time(seg.identity, ("short", skipped, line))
        ):
            log.warning(
                "segment %s holds %d lines, fewer than the %d consumed", seg.name, skipped, line
            )
            self.stats.truncations += 1
        key = ""
        for raw in recent:
            entry = self.parser.parse(raw)
            key = "" if isinstance(entry, Reject) else entry.dedup_key
            if learn and key:
                self._recent.seen(key)
        self.position = Position(seg.name, seg.line, key if skipped else "")

    def _check_identity(self, cur: SegmentFile) -> bool:
        """Reopen ``cur`` if it was rewritten or truncated; True if it is gone."""
        try:
            st = os.stat(cur.path)
        except FileNotFoundError:
            if not self._cur_gone:
                if self.reading.first_time(cur.identity, "vanished"):
                    log.info("segment %s was deleted; reading what remains of it", cur.name)
                    self.stats.vanished += 1
                self._cur_gone = True
            return True
        if (st.st_dev, st.st_ino) == cur.identity and st.st_size >= cur.read_off:
            return False
        rewritten = (st.st_dev, st.st_ino) != cur.identity
        try:
            new = self._segment(cur.name)
        except FileNotFoundError:
            return True
        if rewritten:
            if self.reading.first_time(cur.identity, "rewritten"):
                self.stats.rewrites += 1
        elif self.reading.first_time(cur.identity, ("truncated", st.st_size)):
            log.warning("segment %s was truncated in place", cur.name)
            self.stats.truncations += 1
        self._set_cur(new)
        self._skip_to(new, cur.line)
        return False

    def _begin(self, start: Position | StartAt) -> None:
        if start == "beginning":
            self.position = Position("", 0)
            return
        if start == "end":
            last = self._dir.last_with_data()
            if last is None:
                self.position = Position("", 0)
                return
            self._learn_tail_before(last)
            seg = self._segment(last)
            self._set_cur(seg)
            self._skip_to(seg, None, learn=True)
            log.info("starting at the end of the WAL: %s", describe(self.position))
            return
        assert isinstance(start, Position)
        self._learn_tail_before(start.segment)
        if not self._dir.exists(start.segment):
            self.position = start
            if start.segment:
                log.warning(
                    "saved segment %s no longer exists; resuming at the next segment", start.segment
                )
            return
        seg = self._segment(start.segment)
        self._set_cur(seg)
        self._skip_to(seg, start.line, learn=True)
        if start.last_key and self.position.last_key != start.last_key:
            self._relocate(seg, start)
        log.info("resuming at %s", describe(self.position))

    def _relocate(self, seg: SegmentFile, start: Position) -> None:
        """The saved line no longer holds the saved key: find the key in the segment."""
        probe = self._segment(seg.name)
        found = -1
        try:
            for n, raw in probe.numbered_lines():
                entry = None if raw is None else self.parser.parse(raw)
                if isinstance(entry, Entry) and entry.dedup_key == start.last_key:
                    found = n
        finally:
            probe.close()
        if found < 0:
            log.warning(
                "segment %s no longer holds entry %s at line %d; resuming at line %d",
                seg.name,
                start.last_key,
                start.line,
                self.position.line,
            )
            return
        log.warning("segment %s: saved entry found at line %d, not %d", seg.name, found, start.line)
        # The keys learned while skipping to the wrong line are not all behind us.
        self._recent = RecentKeys(self._dedup_window)
        self._learn_tail_before(seg.name)
        self._set_cur(self._segment(seg.name))
        assert self._cur is not None
        self._skip_to(self._cur, found, learn=True)

    def _learn_tail_before(self, segment: str) -> None:
        """Remember the keys of the last segment with data before ``segment`` (rotation dups).

        Looked for among a bounded number of segments back (LOOK_BACK in the directory):
        Nexus pre-creates at most a few thousand empty ones between two that hold data."""
        name = self._dir.last_with_data_before(segment)
        if name is None:
            return
        try:
            prev = self._segment(name)
        except FileNotFoundError:
            return
        try:
            _, recent, _ = prev.skip_lines(ALL_LINES, keep=self._dedup_window)
        finally:
            prev.close()
        for raw in recent:
            entry = self.parser.parse(raw)
            if isinstance(entry, Entry) and entry.dedup_key:
                self._recent.seen(entry.dedup_key)

    def _emit(self, cur: SegmentFile, lines: list[bytes | None]) -> Batch:
        name = cur.name
        records, key = self._batcher.records(name, cur.line - len(lines), lines, self._recent)
        if self.statuses is not None:
            self._changes += self.statuses.read(records)
        if records:
            self.last_timestamp = records[-1].entry.timestamp
        self.position = Position(name, cur.line, key)
        return Batch(records, self.position)
