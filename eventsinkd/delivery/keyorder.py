"""Order per key (``order: subject``, ``source`` or ``destination``).

Each key (the entry's subject, say) has at most one event *out*: queued, in a
request, parked for a retry or held by a pause. Its later events wait here, oldest
first, and the next one goes out only when the one before is finished (delivered,
or kept as a dead letter) or handed to the sink that replaced this one. So a key's
events reach the receiver in WAL order, retries included, while different keys go
in parallel; and a batch never holds two events of one key.

A reload hands a sink's events to its successor (``Sink.hand_over``). The successor must
not send an event of a key that its predecessor still has out (it may yet fail and
come over): such events wait here too, *blocked*, until the predecessor lets the key
go. Events that come over from the predecessor are older than any the successor read
itself, so they go ahead of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventsinkd.delivery.job import Job

HeldElsewhere = Callable[[str], bool]


class KeyOrder:
    def __init__(self) -> None:
        self._out: set[str] = set()  # keys with an event out
        self._behind: dict[str, deque[Job]] = {}  # key -> its events waiting, oldest first
        self.waiting = 0

    def holds(self, key: str) -> bool:
        return key in self._out or key in self._behind

    def admit(
        self, job: Job, *, older: bool = False, elsewhere: HeldElsewhere | None = None
    ) -> bool:
        """True when ``job`` may go out now; otherwise it waits here behind its key.

        ``older``: it came over from the predecessor (older than this sink's own events).
        ``elsewhere``: whether the predecessor still holds a key.
        """
        key = job.key
        assert key is not None
        if key in self._out or (
            not older and (key in self._behind or (elsewhere is not None and elsewhere(key)))
        ):
            self._wait(job, older)
            return False
        self._out.add(key)
        return True

    def _wait(self, job: Job, older: bool) -> None:
        assert job.key is not None
        behind = self._behind.setdefault(job.key, deque())
        if older:  # ahead of this sink's own events, after those that came over before it
            i = 0
            while i < len(behind) and behind[i].seq < job.seq:
                i += 1
            behind.insert(i, job)
        else:
            behind.append(job)
        job.waiting = True
        self.waiting += 1

    def done(self, job: Job) -> Job | None:
        """``job`` (out) is finished or handed over: its key's next event, which is now out,
        or None when the key is free."""
        key = job.key
        assert key is not None
        nxt = self._pop(key)
        if nxt is None:
            self._out.discard(key)
        return nxt

    def unblock(self, key: str, elsewhere: HeldElsewhere | None = None) -> Job | None:
        """The predecessor let ``key`` go: its first waiting event, now out, if none was out."""
        if key in self._out or (elsewhere is not None and elsewhere(key)):
            return None
        nxt = self._pop(key)
        if nxt is not None:
            self._out.add(key)
        return nxt

    def blocked(self) -> list[str]:
        """Keys with events waiting and none out (waiting for the predecessor)."""
        return [key for key in self._behind if key not in self._out]

    def chain(self, key: str) -> list[Job]:
        """Free ``key``: the events that waited behind it, oldest first."""
        self._out.discard(key)
        behind = list(self._behind.pop(key, ()))
        for job in behind:
            job.waiting = False
        self.waiting -= len(behind)
        return behind

    def clear(self) -> None:
        self._out.clear()
        self._behind.clear()
        self.waiting = 0

    def _pop(self, key: str) -> Job | None:
        behind = self._behind.get(key)
        if not behind:
            return None
        nxt = behind.popleft()
        if not behind:
            del self._behind[key]
        nxt.waiting = False
        self.waiting -= 1
        return nxt


class SinkOrder:
    """One sink's order per key: its :class:`KeyOrder`, linked to the sink a reload replaced
    (``predecessor``) and the one that replaces it (``heir``)."""

    def __init__(self, put: Callable[[Job], None], predecessor: SinkOrder | None) -> None:
        self.keys = KeyOrder()
        self._put = put  # into the sink's queue
        self.predecessor = predecessor
        self.heir: SinkOrder | None = None
        if predecessor is not None:
            predecessor.heir = self

    def admit(self, job: Job, *, older: bool = False) -> bool:
        return self.keys.admit(job, older=older, elsewhere=self._held_before)

    def done(self, job: Job) -> Job | None:
        """``job`` is finished or handed over: its key's next event (out now), or None."""
        nxt = self.keys.done(job)
        if nxt is None and self.heir is not None:
            assert job.key is not None
            self.heir.let_go(job.key)
        return nxt

    def behind(self, job: Job) -> list[Job]:
        """Free ``job``'s key: the events waiting behind it (left with it at shutdown)."""
        assert job.key is not None
        return self.keys.chain(job.key)

    def _held_before(self, key: str) -> bool:
        """Whether a sink this one replaced still has ``key``."""
        pred = self.predecessor
        return pred is not None and (pred.keys.holds(key) or pred._held_before(key))

    def let_go(self, key: str) -> None:
        """The predecessor let ``key`` go: its first event waiting here goes out."""
        nxt = self.keys.unblock(key, self._held_before)
        if nxt is not None:
            self._put(nxt)
        elif not self.keys.holds(key) and self.heir is not None:
            self.heir.let_go(key)

    def close(self) -> None:
        """The sink stopped: it holds nothing, and its heir waits for it no more."""
        self.keys.clear()
        heir = self.heir
        if heir is not None:
            heir.predecessor = None
            for key in heir.keys.blocked():
                heir.let_go(key)
