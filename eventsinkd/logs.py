"""Logging setup: JSON lines for services, plain text for a terminal."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal

import orjson

from eventsinkd.secrets import ScrubFilter

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
