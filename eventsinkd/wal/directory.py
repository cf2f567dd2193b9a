"""The WAL directory as the reader sees it: segment names, and which later one holds data.

Following a busy WAL asks two questions after almost every append: "which
segments exist?" and "does any segment after the current one hold data yet?".
Answered naively (list and sort the directory, stat every later segment) their
cost grows with the number of files, and Nexus never deletes segments and can
pre-create hundreds of empty ones. So:

* the listing is reused while the directory's mtime is unchanged (appends do
  not change it; creating, renaming or deleting a segment does), redone at most
  every ``MIN_RELIST_S`` when it does change (Nexus can create a segment per
  group commit, and a listing costs time in proportion to the files), and at
  least every ``RELIST_S`` for filesystems with coarse timestamps;
* the later-data check stats only segments not seen empty before and the
  newest one (where Nexus's next write lands), and sweeps all of them every
  ``SWEEP_S``; when any later segment has data, a full pass picks the first.
"""

from __future__ import annotations

import bisect
import os
import time
from pathlib import Path

from eventsinkd.wal.segments import list_segments

RELIST_S = 1.0
MIN_RELIST_S = 0.1
SWEEP_S = 0.5


class SegmentDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._names: list[str] = []
        self._ident: tuple[int, int, int] | None = None
        self._listed_at = float("-inf")
        self._swept_at = float("-inf")
        self._seen_empty: set[str] = set()
        self.listings = 0  # listings made so far: a new one may hold files renamed in
        self.relist_s = RELIST_S
        self.min_relist_s = MIN_RELIST_S

    def names(self) -> list[str]:
        """Segment names in WAL order; raises OSError when the directory cannot be read."""
        st = os.stat(self.path)
        ident = (st.st_dev, st.st_ino, st.st_mtime_ns)
        since = time.monotonic() - self._listed_at
        if (ident != self._ident and since >= self.min_relist_s) or since >= self.relist_s:
            # The identity is taken before listing: a change during the listing
            # leaves it different, so the next call lists again.
            self._names = list_segments(self.path)
            self._ident = ident
            self._listed_at = time.monotonic()
            self.listings += 1
        return self._names

    def first_with_data_after(self, names: list[str], after: str) -> str | None:
        later = names[bisect.bisect_right(names, after) :]
        if not later:
            return None
        now = time.monotonic()
        if now - self._swept_at < SWEEP_S:
            quick = [n for n in later if n not in self._seen_empty]
            if later[-1] in self._seen_empty:
                quick.append(later[-1])
            if not any(self._has_data(n) for n in quick):
                return None
            for name in later:
                if self._has_data(name):
                    return name
            return None
        # The sweep: every later segment, and only those are remembered as empty
        # (older names are behind the reader for good), so the set stays small.
        self._swept_at = now
        self._seen_empty.clear()
        for name in later:
            if self._has_data(name):
                return name
        return None

    def size_after(self, names: list[str], after: str) -> int:
        """Total bytes of the segments after ``after`` (for lag figures)."""
        total = 0
        for name in names[bisect.bisect_right(names, after) :]:
            try:
                total += os.stat(self.path / name).st_size
            except FileNotFoundError:
                continue
        return total

    def _has_data(self, name: str) -> bool:
        try:
            size = os.stat(self.path / name).st_size
        except FileNotFoundError:
            return False
        if size > 0:
            self._seen_empty.discard(name)
            return True
        self._seen_empty.add(name)
        return False
