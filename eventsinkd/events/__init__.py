"""Map WAL entries to webhook events (shared/spec/events.md)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Literal

import orjson

from eventsinkd.wal.entry import DELIVERED, PERMANENT_FAILURE, Entry
from eventsinkd.wal.gotime import parse_go_time, parse_go_time_ns

MEMORY_WRITTEN = "memory_written"
MEMORY_PERSISTED = "memory_persisted"  # opt-in: the entry's status became DELIVERED
MEMORY_WRITE_FAILED = "memory_write_failed"  # opt-in: it became PERMANENT_FAILURE
EVENT_TYPES = (MEMORY_WRITTEN, MEMORY_PERSISTED, MEMORY_WRITE_FAILED)
EventType = Literal["memory_written", "memory_persisted", "memory_write_failed"]
# The status an entry's line is rewritten with -> the event that reports it.
STATUS_EVENTS = {DELIVERED: MEMORY_PERSISTED, PERMANENT_FAILURE: MEMORY_WRITE_FAILED}
ContentMode = Literal["summary", "full"]
# The fields of an event's body that say which memory and whose, in the body's order: what
# templates can name, and what OTLP carries as attributes.
EVENT_FIELDS = (
    "event_type",
    "payload_id",
    "source",
    "subject",
    "destination",
    "actor_type",
    "actor_id",
)

# Go's encoding/json (which Nexus's notifier uses) escapes these inside strings.
# They only ever occur inside JSON strings, so a byte replace is exact.
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def go_json(obj: Any) -> bytes:
    """Compact JSON with the bytes Go's json.Marshal would produce for the same values."""
    out = orjson.dumps(obj)
    escaped_any = False
    for raw, escaped in _GO_ESCAPES:
        if raw in out:
            out = out.replace(raw, escaped)
            escaped_any = True
    # orjson's result keeps the buffer it was built in (4 KiB for a small body): a
    # sink holding 1,000 events would hold 4 MiB. A copy is exactly the body's size.
    return out if escaped_any else memoryview(out).tobytes()


def event_type(entry: Entry) -> str | None:
    """The event an entry becomes, or None (checkpoint, audit and signal entries)."""
    return MEMORY_WRITTEN if entry.is_data else None


def status_event_type(entry: Entry) -> str | None:
    """The status event a data entry's status makes, or None (still PENDING, or unknown)."""
    return STATUS_EVENTS.get(entry.status) if entry.is_data else None


def webhook_id(kind: str, entry: Entry) -> str:
    """Stable across retries, restarts and re-reads: derived from the entry alone."""
    return f"{kind}:{entry.payload_id}"


def event_body(entry: Entry, content: ContentMode = "summary", kind: str = MEMORY_WRITTEN) -> bytes:
    """The JSON body Nexus's notifier sends, fields in its order; a status event (``kind``
    other than memory_written) adds the entry's ``status`` after them."""
    body: dict[str, Any] = {
        "event_type": kind,
        "payload_id": entry.payload_id,
        "source": entry.source,
        "subject": entry.subject,
        "destination": entry.destination,
        "timestamp": entry.timestamp,
        "actor_type": entry.actor_type,
        "actor_id": entry.actor_id,
    }
    if kind != MEMORY_WRITTEN:
        body["status"] = entry.status
    if content == "full":
        # The payload's JSON text as Nexus wrote it, which is Go's json.Marshal's.
        body["content"] = orjson.Fragment(entry.payload_json)
    return go_json(body)


class Event:
    """One event on its way to the sinks.

    The bodies the sinks need are rendered once, up front, and the entry is not
    kept: a queued event costs its body bytes, not the whole decoded memory.
    """

    __slots__ = ("_bodies", "id", "read_ns", "shaped", "ticket", "timestamp", "type")

    def __init__(self, kind: str, entry: Entry, contents: Iterable[ContentMode]) -> None:
        self.type = kind
        self.id = webhook_id(kind, entry)
        self.timestamp = entry.timestamp
        self.read_ns = time.time_ns()  # when eventsinkd read it (OTLP's observed time)
        self.ticket: object = None  # the engine's acknowledgement handle (block mode)
        # The body the sink's ``transform`` made of it (events.transform), sent instead.
        self.shaped: bytes | None = None
        bodies = {}
        for content in contents:  # (a loop: a comprehension is one more frame per event)
            bodies[content] = event_body(entry, content, kind)
        self._bodies = bodies

    @classmethod
    def stored(cls, kind: str, webhook_id: str, timestamp: str, body: bytes) -> Event:
        """An event rebuilt from a dead letter: its body exactly as first sent."""
        event = cls.__new__(cls)
        event.type, event.id, event.timestamp, event.ticket = kind, webhook_id, timestamp, None
        event.read_ns = time.time_ns()
        event._bodies = {"summary": body, "full": body}
        event.shaped = None
        return event

    def body(self, content: ContentMode) -> bytes:
        """The body to send: the sink's ``transform`` of it (:attr:`shaped`), else the body
        rendered for ``content``."""
        shaped = self.shaped
        if shaped is not None:
            return shaped
        # (original_body's lines: one call less per request)
        body = self._bodies.get(content)
        return body if body is not None else next(iter(self._bodies.values()))

    def original_body(self, content: ContentMode) -> bytes:
        """The body rendered for ``content`` (before any transform: what a dead letter keeps).
        An event read before a reload changed its sink's ``content`` keeps the body it was
        read with: the entry is not kept to render another."""
        body = self._bodies.get(content)
        return body if body is not None else next(iter(self._bodies.values()))

    def fields(self) -> dict[str, Any]:
        """The body's fields (event_type, payload_id, source...), for transports that carry
        them apart from the body: parsed from the body when asked, not kept per event. Always
        the event's own fields, whatever a transform made of its body."""
        body = next(iter(self._bodies.values()))
        fields: dict[str, Any] = orjson.loads(body)
        return fields

    @property
    def wal_time(self) -> float | None:
        """Unix time the WAL gave the entry (parsed when a sink needs it, not per event)."""
        return parse_go_time(self.timestamp)

    @property
    def wal_time_ns(self) -> int | None:
        return parse_go_time_ns(self.timestamp)
