"""Reading the Nexus write-ahead log: line format, segment following, saved position."""

from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser, Reject
from eventsinkd.wal.position import Position

__all__ = ["Entry", "LineParser", "Position", "Reject"]
