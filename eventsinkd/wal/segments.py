"""Segment files: naming, listing, and reading complete lines from an open segment.

A :class:`SegmentFile` keeps its file descriptor open. That is what proves
identity: while we hold the inode, no other file can get its number, so
"path's inode == our inode" means the segment was not replaced by a rewrite.
"""

from __future__ import annotations

import os
import re
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


class SegmentFile:
    """An open segment, consumed line by line from ``line`` complete lines in."""

    def __init__(self, wal_dir: Path, name: str) -> None:
        self.name = name
        self.path = wal_dir / name
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self._fd)
        self.identity = (st.st_dev, st.st_ino)
        self.line = 0  # complete lines consumed
        self.read_off = 0  # bytes read from the file (consumed lines + pending tail)
        self._tail = b""  # bytes after the last newline read so far
        self._skipping = False  # inside a line longer than MAX_LINE_BYTES

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def pending_tail(self) -> bool:
        """True when bytes without a terminating newline were read (a line being written)."""
        return bool(self._tail) or self._skipping

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read_lines(
        self, max_lines: int | None = None, max_bytes: int = 4 * CHUNK_BYTES
    ) -> list[bytes | None]:
        """Complete lines appended since the last call (at most ``max_lines``, about ``max_bytes``).

        A line longer than MAX_LINE_BYTES comes back as ``TOO_LONG`` (None) once
        its newline is seen; its bytes are never held in memory.
        """
        out: list[bytes | None] = []
        budget = max_bytes
        # The byte budget bounds a batch, but never ends a read that has found no
        # line yet: a line longer than the budget must still reach its newline.
        while (budget > 0 or not out) and (max_lines is None or len(out) < max_lines):
            chunk_off = self.read_off
            chunk = os.pread(self._fd, CHUNK_BYTES, chunk_off)
            if not chunk:
                break
            budget -= len(chunk)
            nl = chunk.rfind(b"\n")
            if nl < 0:
                self.read_off += len(chunk)
                self._hold(chunk)
                continue
            cut = False
            if max_lines is not None:
                need = max_lines - len(out)
                if chunk.count(b"\n") > need:
                    nl = -1
                    for _ in range(need):
                        nl = chunk.find(b"\n", nl + 1)
                    cut = True
            data = self._tail + chunk[:nl] if self._tail else chunk[:nl]
            self._tail = b""
            lines: list[bytes | None] = list(data.split(b"\n"))
            if self._skipping:
                lines[0] = TOO_LONG
                self._skipping = False
            for i, ln in enumerate(lines):
                if ln is not None and len(ln) > MAX_LINE_BYTES:
                    lines[i] = TOO_LONG
            out.extend(lines)
            if cut:
                self.read_off = chunk_off + nl + 1
            else:
                self.read_off = chunk_off + len(chunk)
                self._hold(chunk[nl + 1 :])
        self.line += len(out)
        return out

    def _hold(self, rest: bytes) -> None:
        if self._skipping:
            return
        if len(self._tail) + len(rest) > MAX_LINE_BYTES:
            self._tail = b""
            self._skipping = True
        else:
            self._tail += rest

    def skip_lines(self, n: int, keep: int = 0) -> tuple[int, list[bytes]]:
        """Consume up to ``n`` lines; returns how many there were and the last ``keep`` of them.

        The kept lines let the caller re-learn dedup keys and check the saved
        position's last key without parsing the whole segment.
        """
        skipped = 0
        recent: list[bytes] = []
        while skipped < n:
            lines = self.read_lines(max_lines=n - skipped)
            if not lines:
                break
            skipped += len(lines)
            if keep:
                recent.extend(ln for ln in lines if ln is not None)
                del recent[:-keep]
        return skipped, recent
