"""Events as CloudEvents 1.0 (``format: cloudevents``), in the three content modes of its
HTTP protocol binding, and structured in a NATS message.

Attributes: ``specversion`` 1.0; ``id`` the webhook-id; ``source`` the sink's template
(default ``//<this host>/nexus/<entry source>``); ``type`` ``<type_prefix>.<event type>``;
``subject`` the entry's subject; ``time`` the WAL time (RFC 3339, as Nexus wrote it);
``datacontenttype`` application/json; ``data`` the body (Nexus's, or the sink's
transform of it). Extensions: ``destination``, ``actortype``, ``actorid``. An optional
attribute whose value is empty is left out (CloudEvents: present means non-empty).

Written by hand with orjson rather than with the official SDK (which the tests parse the
requests with): the SDK builds an object per event and serialises it with the standard
json module, several times the cost of what a sink spends per event otherwise.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Sequence
from typing import Any

import orjson

from eventsinkd.config.cloudevents import CE_SOURCE_FIELDS, CloudEventsConfig
from eventsinkd.events import ContentMode, Event
from eventsinkd.events.templates import Template, header_value, path_segment

SPECVERSION = "1.0"
JSON = "application/json"
STRUCTURED = "application/cloudevents+json"
BATCHED = "application/cloudevents-batch+json"
# body field -> extension attribute (lower-case alphanumerics, as the spec asks)
EXTENSIONS = (("destination", "destination"), ("actor_type", "actortype"), ("actor_id", "actorid"))


class CloudEvents:
    """One sink's way of making events CloudEvents."""

    def __init__(self, cfg: CloudEventsConfig) -> None:
        self.mode = cfg.mode
        self._source = Template(
            cfg.source,
            path_segment,
            allowed=CE_SOURCE_FIELDS,
            static={"host": socket.gethostname()},
        )
        self._types = {}
        for kind in ("memory_written", "memory_persisted", "memory_write_failed"):
            self._types[kind] = f"{cfg.type_prefix}.{kind}"
        self._prefix = cfg.type_prefix
        self.content_type = {"binary": JSON, "structured": STRUCTURED, "batched": BATCHED}[cfg.mode]

    def attributes(self, event: Event) -> dict[str, str]:
        """Every attribute but ``data``, in the spec's order, then the extensions."""
        fields = event.fields()
        kind = event.type
        attrs = {
            "specversion": SPECVERSION,
            "id": event.id,
            "source": self._source.render_fields(kind, fields),
            "type": self._types.get(kind) or f"{self._prefix}.{kind}",
        }
        subject = fields.get("subject")
        if subject:
            attrs["subject"] = str(subject)
        if event.timestamp:
            attrs["time"] = event.timestamp
        attrs["datacontenttype"] = JSON
        for field, name in EXTENSIONS:
            value = fields.get(field)
            if value:
                attrs[name] = str(value)
        return attrs

    def structured(self, event: Event, content: ContentMode) -> bytes:
        """The event as one JSON object, ``data`` the body."""
        doc: dict[str, Any] = self.attributes(event)
        doc["data"] = orjson.Fragment(event.body(content))
        return orjson.dumps(doc)

    def batch(self, events: Sequence[Event], content: ContentMode) -> bytes:
        """The events as a JSON array (``application/cloudevents-batch+json``)."""
        return b"[" + b",".join(self.structured(e, content) for e in events) + b"]"

    def headers(self, event: Event) -> list[tuple[str, str]]:
        """Binary mode: every attribute but ``datacontenttype`` (the Content-Type) as a ce-
        header, percent-encoded as the HTTP binding says."""
        return [
            (f"ce-{name}", header_value(value))
            for name, value in self.attributes(event).items()
            if name != "datacontenttype"
        ]


def batch_id(events: Sequence[Event]) -> str:
    """A batch's webhook-id: the same for the same events (a retry of the whole batch)."""
    digest = hashlib.sha256("\n".join(e.id for e in events).encode()).hexdigest()
    return f"batch:{digest[:32]}"
