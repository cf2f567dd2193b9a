"""Map WAL entries to webhook events (shared/spec/events.md)."""

from __future__ import annotations

from typing import Any, Literal

import orjson

from eventsinkd.wal.entry import Entry

MEMORY_WRITTEN = "memory_written"
ContentMode = Literal["summary", "full"]


def event_type(entry: Entry) -> str | None:
    """The event an entry becomes, or None (checkpoint, audit and signal entries)."""
    return MEMORY_WRITTEN if entry.is_data else None


def webhook_id(kind: str, entry: Entry) -> str:
    """Stable across retries, restarts and re-reads: derived from the entry alone."""
    return f"{kind}:{entry.payload_id}"


def event_body(entry: Entry, content: ContentMode = "summary") -> bytes:
    """The JSON body Nexus's notifier sends, fields in its order."""
    body: dict[str, Any] = {
        "event_type": MEMORY_WRITTEN,
        "payload_id": entry.payload_id,
        "source": entry.source,
        "subject": entry.subject,
        "destination": entry.destination,
        "timestamp": entry.timestamp,
        "actor_type": entry.actor_type,
        "actor_id": entry.actor_id,
    }
    if content == "full":
        body["content"] = entry.payload
    return orjson.dumps(body)
