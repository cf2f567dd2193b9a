"""Block mode: the saved position may only pass events every sink has finished.

Each event gets a ticket counting the sinks still working on it; batch ends are
tickets with nothing to wait for. Tickets complete in any order, but the
position moves only across the completed prefix, so it never passes an event
that is queued, in flight or waiting for a retry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from eventsinkd.wal.position import Position


class Ticket:
    __slots__ = ("position", "remaining")

    def __init__(self, position: Position, remaining: int) -> None:
        self.position = position
        self.remaining = remaining


class AckTracker:
    def __init__(self, ack: Callable[[Position], None]) -> None:
        self._ack = ack
        self._pending: deque[Ticket] = deque()

    @property
    def oldest_unfinished(self) -> Position | None:
        return self._pending[0].position if self._pending else None

    def track(self, position: Position, sinks: int) -> Ticket:
        ticket = Ticket(position, sinks)
        self._pending.append(ticket)
        if sinks == 0:
            self._advance()
        return ticket

    def done(self, ticket: Ticket) -> None:
        ticket.remaining -= 1
        if ticket.remaining == 0 and self._pending and self._pending[0] is ticket:
            self._advance()

    def _advance(self) -> None:
        last: Ticket | None = None
        pending = self._pending
        while pending and pending[0].remaining <= 0:
            last = pending.popleft()
        if last is not None:
            self._ack(last.position)
