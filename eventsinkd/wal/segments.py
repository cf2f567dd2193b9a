"""Segment files: naming, listing, and reading complete lines from an open segment.

A :class:`SegmentFile` keeps its file descriptor open. That is what proves
identity: while we hold the inode, no other file can get its number, so
"path's inode == our inode" means the segment was not replaced by a rewrite.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path

from eventsinkd.wal.lines import MAX_LINE_BYTES

SEGMENT_RE = re.compile(r"wal-\d+\.jsonl")
CHUNK_BYTES = 1 << 20

TOO_LONG = None  # stands in a line list for a line longer than MAX_LINE_BYTES


def list_segments(wal_dir: Path) -> list[str]:
    """Segment names in WAL order (name order is chronological); ``wal-*.tmp`` excluded."""
    with os.scandir(wal_dir) as it:
        names = [e.name for e in it if SEGMENT_RE.fullmatch(e.name)]
    names.sort()
    return names


class WouldBlock(Exception):
    """A file that may block (not a regular file: a FIFO, a device) met on the event loop.
    Raised before anything changed: the step is made again in the reader thread."""


class SegmentFile:
    """An open segment, consumed line by line from ``line`` complete lines in.

    ``on_loop``: opened on the event loop, where an open that could block must not be
    made. The open does not wait (``O_NONBLOCK``, which changes nothing for a regular
    file), and anything but a regular file raises :class:`WouldBlock`.
    """

    def __init__(self, wal_dir: Path, name: str, *, on_loop: bool = False) -> None:
        self.name = name
        self.path = wal_dir / name
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if on_loop else 0)
        self._fd = os.open(self.path, flags)
        st = os.fstat(self._fd)
        if on_loop and not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise WouldBlock(f"{name} is not a regular file")
        self.identity = (st.st_dev, st.st_ino)
        self.line = 0  # complete lines consumed
        self.read_off = 0  # bytes read from the file (consumed lines + pending tail)
        self._tail = b""  # bytes after the last newline read so far
        self._ready: list[bytes | None] = []  # complete lines read but not handed out yet
        self._skipping = False  # inside a line longer than MAX_LINE_BYTES
        self._eof = False  # the last read reached the end of the file

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def read_all(self) -> bool:
        """True when every line written when last read has been handed out."""
        return self._eof and not self._ready

    @property
    def pending_tail(self) -> bool:
        """True when bytes without a terminating newline were read (a line being written)."""
        return bool(self._tail) or self._skipping

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def stat(self) -> os.stat_result:
        """The open file's (not the path's) status."""
        return os.fstat(self._fd)

    def read_lines(
        self, max_lines: int | None = None, max_bytes: int = 2 * CHUNK_BYTES
    ) -> list[bytes | None]:
        """Complete lines appended since the last call (at most ``max_lines``, about ``max_bytes``).

        A line longer than MAX_LINE_BYTES comes back as ``TOO_LONG`` (None) once
        its newline is seen; its bytes are never held in memory.
        """
        # Top up a short list, so batches stay full while catching up; a fill reads
        # about max_bytes, which bounds what each cursor holds.
        if not self._ready or (max_lines is not None and len(self._ready) < max_lines):
            self._fill(max_bytes)
        ready = self._ready
        if max_lines is None or len(ready) <= max_lines:
            out, self._ready = ready, []
        else:
            out, self._ready = ready[:max_lines], ready[max_lines:]
        self.line += len(out)
        return out

    def _fill(self, max_bytes: int) -> None:
        """Read chunks into ``_ready`` (complete lines) and ``_tail`` (the rest)."""
        ready = self._ready
        # The byte budget bounds a batch, but never ends a read that has found no
        # line yet: a line longer than the budget must still reach its newline.
        budget = max_bytes
        self._eof = False
        while budget > 0 or not ready:
            chunk = os.pread(self._fd, CHUNK_BYTES, self.read_off)
            if not chunk:
                self._eof = True
                break
            self.read_off += len(chunk)
            budget -= len(chunk)
            # A short read is the end of the file as it was: not one more pread to see it.
            self._eof = len(chunk) < CHUNK_BYTES
            nl = chunk.rfind(b"\n")
            if nl < 0:
                self._hold(chunk)
                if self._eof:
                    break
                continue
            data = self._tail + chunk[:nl] if self._tail else chunk[:nl]
            self._tail = b""
            lines: list[bytes | None] = data.split(b"\n")  # type: ignore[assignment]
            if self._skipping:
                lines[0] = TOO_LONG
                self._skipping = False
            if len(data) > MAX_LINE_BYTES:  # only then can one of them be too long
                lines = [
                    TOO_LONG if ln is not None and len(ln) > MAX_LINE_BYTES else ln for ln in lines
                ]
            ready.extend(lines)
            self._hold(chunk[nl + 1 :])
            if self._eof:
                break

    def _hold(self, rest: bytes) -> None:
        if self._skipping:
            return
        if len(self._tail) + len(rest) > MAX_LINE_BYTES:
            self._tail = b""
            self._skipping = True
        else:
            self._tail += rest

    def numbered_lines(self) -> Iterator[tuple[int, bytes | None]]:
        """Every complete line left, with its 1-based line number (``TOO_LONG`` for None)."""
        while lines := self.read_lines():
            yield from enumerate(lines, self.line - len(lines) + 1)

    def skip_lines(
        self, n: int, keep: int = 0, pick: AbstractSet[int] = frozenset()
    ) -> tuple[int, list[bytes], dict[int, bytes | None]]:
        """Consume up to ``n`` lines; returns how many there were, the last ``keep`` of them,
        and the lines numbered in ``pick`` (1-based, counted from the start of the file).

        The kept lines let the caller re-learn dedup keys and check the saved
        position's last key without parsing the whole segment; the picked ones are
        the entries it follows for status events.
        """
        skipped = 0
        recent: list[bytes] = []
        picked: dict[int, bytes | None] = {}
        while skipped < n:
            lines = self.read_lines(max_lines=n - skipped)
            if not lines:
                break
            skipped += len(lines)
            if keep:
                recent.extend(ln for ln in lines if ln is not None)
                del recent[:-keep]
            if pick:
                first = self.line - len(lines) + 1
                for line in pick:
                    if first <= line <= self.line:
                        picked[line] = lines[line - first]
        return skipped, recent, picked
