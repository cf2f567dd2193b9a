"""One decoded WAL entry, as Nexus wrote it."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

DATA = ""  # entry_type of a memory write (absent in v0.1.2 entries)


class Entry(NamedTuple):
    # A NamedTuple rather than a dataclass: the reader makes one per WAL line, and
    # building a tuple costs a fraction of setting twelve slots (see BENCHMARKS.md).
    payload_id: str
    idempotency_key: str
    status: str
    timestamp: str  # the original Go RFC 3339 string, never re-formatted
    source: str
    destination: str
    subject: str
    actor_type: str
    actor_id: str
    entry_type: str
    payload_json: bytes  # the payload's JSON text as the line has it (b"null" when absent)
    monotonic_seq: int

    @property
    def is_data(self) -> bool:
        return self.entry_type == DATA

    @property
    def payload(self) -> Any:
        """The payload decoded (the reader does not: most sinks never need it)."""
        return orjson.loads(self.payload_json)

    @property
    def dedup_key(self) -> str:
        """What identifies the write across segments (Nexus replays by idempotency key)."""
        return self.idempotency_key or self.payload_id
