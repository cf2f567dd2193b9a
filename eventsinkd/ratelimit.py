"""Log lines that cannot flood: the first occurrence, then at most one per interval."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        """Log ``msg`` unless ``key`` was logged less than ``interval_s`` ago (then count it).
        ``exc_info``: with the exception being handled."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._log.log(level, msg, *args, exc_info=exc_info)

    def reset(self, key: str) -> None:
        """Let the next message of ``key`` out at once (a new occurrence, not a repeat)."""
        self._last.pop(key, None)
