"""Block mode: a sink's saved position may only pass events that sink has finished.

Each event gets a ticket; batch ends are tickets with nothing to wait for.
Tickets complete in any order, but the position moves only across the
completed prefix, so it never passes an event that is queued, in flight,
waiting for a retry or waiting out a pause.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from eventsinkd.wal.position import Position


class Ticket:
    __slots__ = ("done", "position", "timestamp", "tracker")

    def __init__(self, tracker: AckTracker, position: Position, timestamp: str) -> None:
        self.tracker = tracker
        self.position = position
        self.timestamp = timestamp  # the entry's WAL time (lag figures)
        self.done = False


class AckTracker:
    def __init__(self, ack: Callable[[Position], None]) -> None:
        self._ack: Callable[[Position], None] | None = ack
        self._pending: deque[Ticket] = deque()

    @property
    def oldest_unfinished(self) -> Ticket | None:
        for ticket in self._pending:
            if not ticket.done:
                return ticket
        return None

    def close(self) -> None:
        """Forget everything: tickets finished from now on move no position (a rewind)."""
        self._ack = None
        self._pending.clear()

    def track(self, position: Position, timestamp: str = "", *, finished: bool = False) -> Ticket:
        ticket = Ticket(self, position, timestamp)
        self._pending.append(ticket)
        if finished:
            self.done(ticket)
        return ticket

    def done(self, ticket: Ticket) -> None:
        ticket.done = True
        if self._pending and self._pending[0] is ticket:
            self._advance()

    def _advance(self) -> None:
        last: Ticket | None = None
        pending = self._pending
        while pending and pending[0].done:
            last = pending.popleft()
        if last is not None and self._ack is not None:
            self._ack(last.position)
