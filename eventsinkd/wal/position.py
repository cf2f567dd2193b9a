"""Where a reader is in the WAL.

A position is "``line`` complete lines of ``segment`` consumed". Line counts
survive Nexus's status rewrites (same lines, same order, new inode, new size);
byte offsets do not, so none is stored. ``last_key`` is the dedup key of the
entry on line ``line - 1`` and proves on resume that the segment still holds
the lines we counted. Saving positions is :mod:`eventsinkd.state.positions`'s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True, order=True)
class Position:
    segment: str  # segment file name; "" sorts before every segment
    line: int  # complete lines of that segment already consumed
    last_key: str = ""

    def key(self) -> tuple[str, int]:
        return (self.segment, self.line)

    def __str__(self) -> str:
        return f"{self.segment}:{self.line}"


def describe(pos: Position) -> str:
    """A position in words, for messages."""
    if not pos.segment:
        return "the beginning of the WAL"
    if pos.line == 0:
        return f"the start of segment {pos.segment}"
    return f"segment {pos.segment} after line {pos.line}"
