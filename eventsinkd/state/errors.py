"""Failed writes of eventsinkd's own state: visible while they last, logged without flooding.

A cursor that cannot be saved, a dead letter that cannot be stored, a request
file that cannot be removed: each is retried by its owner, and meanwhile it is
a ``/status`` problem, fails readiness, and counts in
``eventsinkd_state_errors_total{kind}``. The first failure of a thing is logged
at ERROR at once; repeats are counted and logged at most once a minute (with
the count), so a full volume gives a handful of lines, not one per event per
retry. The next success clears the problem and says so.
"""

from __future__ import annotations

import logging

from eventsinkd.common.logs import RateLimitedLog

log = logging.getLogger("eventsinkd.state")

CURSOR = "cursor"
DEAD_LETTERS = "dead_letters"
CONTROL = "control"
KINDS = (CURSOR, DEAD_LETTERS, CONTROL)
REPEAT_EVERY_S = 60.0


class StateErrors:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(KINDS, 0)  # failures since start, by kind
        self._failing: dict[tuple[str, str], str] = {}  # (kind, what) -> the latest message
        self._rlog = RateLimitedLog(log, REPEAT_EVERY_S)

    def failed(self, kind: str, what: str, message: str) -> None:
        """A write of ``what`` (a file, a store) failed; ``message`` says how and what to do."""
        self.counts[kind] += 1
        key = (kind, what)
        if key not in self._failing:
            self._rlog.reset(f"{kind}:{what}")  # a new outage: its first line goes out at once
        self._failing[key] = message
        self._rlog.log(logging.ERROR, f"{kind}:{what}", "%s; retrying", message)

    def ok(self, kind: str, what: str) -> None:
        """A write of ``what`` succeeded: whatever failed before is over."""
        if self._failing.pop((kind, what), None) is not None:
            log.info("%s works again", what)

    @property
    def failing(self) -> bool:
        return bool(self._failing)

    def problems(self) -> list[str]:
        return [self._failing[key] for key in sorted(self._failing)]
