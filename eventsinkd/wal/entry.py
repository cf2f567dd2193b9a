"""One decoded WAL entry, as Nexus wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DATA = ""  # entry_type of a memory write (absent in v0.1.2 entries)


@dataclass(slots=True, frozen=True)
class Entry:
    payload_id: str
    idempotency_key: str
    status: str
    timestamp: str  # the original Go RFC 3339 string, never re-formatted
    source: str
    destination: str
    subject: str
    actor_type: str
    actor_id: str
    payload: Any
    entry_type: str
    monotonic_seq: int

    @property
    def is_data(self) -> bool:
        return self.entry_type == DATA

    @property
    def dedup_key(self) -> str:
        """What identifies the write across segments (Nexus replays by idempotency key)."""
        return self.idempotency_key or self.payload_id
