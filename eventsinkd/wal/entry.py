"""One decoded WAL entry, as Nexus wrote it."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson

DATA = ""  # entry_type of a memory write (absent in v0.1.2 entries)
# An entry's status (nexus-wal.md): PENDING when appended; Nexus rewrites the line in place
# with one of the final two once the memory is stored, or given up on.
PENDING = "PENDING"
DELIVERED = "DELIVERED"
PERMANENT_FAILURE = "PERMANENT_FAILURE"
FINAL_STATUSES = (DELIVERED, PERMANENT_FAILURE)
NULL = msgspec.Raw(b"null")


class Entry(msgspec.Struct, frozen=True, gc=False):
    """The fields of a WAL line's JSON that eventsinkd uses, in Nexus's order.

    msgspec decodes a line straight into this (:func:`eventsinkd.wal.lines.entry_from_json_bytes`):
    fields Nexus may add are skipped without being built, and the payload is kept as its
    JSON text, not decoded (a summary sink never needs it). A missing string is "", as Go's
    zero value.
    """

    payload_id: str = ""
    idempotency_key: str = ""
    status: str = ""
    timestamp: str = ""  # the original Go RFC 3339 string, never re-formatted
    source: str = ""
    destination: str = ""
    subject: str = ""
    actor_type: str = ""
    actor_id: str = ""
    entry_type: str = ""  # absent in v0.1.2 entries
    # The payload's JSON text, a view of the line's bytes ("null" when absent).
    raw_payload: msgspec.Raw = msgspec.field(name="payload", default=NULL)
    monotonic_seq: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] = 0

    @property
    def is_data(self) -> bool:
        return self.entry_type == DATA

    @property
    def payload_json(self) -> bytes:
        """The payload's JSON text as the line has it (Go's json.Marshal's bytes)."""
        return bytes(self.raw_payload)

    @property
    def payload(self) -> Any:
        """The payload decoded (the reader does not: most sinks never need it)."""
        return orjson.loads(memoryview(self.raw_payload))

    @property
    def dedup_key(self) -> str:
        """What identifies the write across segments (Nexus replays by idempotency key)."""
        return self.idempotency_key or self.payload_id
