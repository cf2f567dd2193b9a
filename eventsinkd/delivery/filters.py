"""Per-sink event filters: event types, and glob patterns on entry fields."""

from __future__ import annotations

import re
from fnmatch import translate

from eventsinkd.config.options import FilterConfig
from eventsinkd.wal.entry import Entry


def _compile(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


class EventFilter:
    def __init__(self, cfg: FilterConfig) -> None:
        self._types = frozenset(cfg.event_types)
        self._fields = [
            (name, rx)
            for name in ("source", "subject", "destination", "actor_type")
            if (rx := _compile(getattr(cfg, name))) is not None
        ]

    def matches(self, kind: str, entry: Entry) -> bool:
        if self._types and kind not in self._types:
            return False
        return all(rx.match(getattr(entry, name)) for name, rx in self._fields)
