"""Logging: the setup (JSON lines for services, plain text for a terminal), and log lines
that cannot flood (:class:`RateLimitedLog`: the first occurrence, then at most one per
interval)."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Literal

import orjson

from eventsinkd.common.secrets import ScrubFilter

LogFormat = Literal["auto", "json", "text"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:  # set (and scrubbed) by ScrubFilter
            doc["exc"] = record.exc_text
        elif record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level``; ``auto`` is text on a terminal and JSON lines otherwise
    (a journal, a container's log, a file)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubFilter())  # no secret in any log line, at any level
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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
