"""Nexus's time format: Go's RFC 3339 timestamps (up to 9 fraction digits), read exactly."""

from __future__ import annotations

import re
from datetime import datetime

_GO_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def parse_go_time(value: str) -> float | None:
    """Unix seconds of a Go RFC 3339 timestamp (up to 9 fraction digits); None if malformed."""
    ns = parse_go_time_ns(value)
    return None if ns is None else ns / 1e9


# Go writes UTC as YYYY-MM-DDTHH:MM:SS[.F{1,9}]Z. Once the exact parser has read a
# timestamp of a second, the others of that second are its Unix time plus their
# fraction: no date parsing per event (a WAL's entries come a few thousand per second).
_GO_UTC = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", re.ASCII)
SECONDS_KEPT = 64
_seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" the exact parser read -> Unix seconds


def parse_go_time_ns(value: str) -> int | None:
    """Unix nanoseconds of a Go RFC 3339 timestamp, exactly; None if malformed."""
    m = _GO_UTC.fullmatch(value)
    if m is not None:
        seconds = _seconds.get(m[1])
        if seconds is not None:
            return seconds * 1_000_000_000 + int((m[2] or "0").ljust(9, "0"))
    ns = _parse_go_time_ns(value)
    if m is not None and ns is not None:
        if len(_seconds) >= SECONDS_KEPT:
            _seconds.clear()
        _seconds[m[1]] = ns // 1_000_000_000
    return ns


def _parse_go_time_ns(value: str) -> int | None:
    m = _GO_TIME.fullmatch(value)
    if m is None:
        return None
    base, frac, zone = m.groups()
    try:
        dt = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return int(dt.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
