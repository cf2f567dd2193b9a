"""A sink's ``format: cloudevents`` options (CloudEvents 1.0; for webhook and nats sinks)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from eventsinkd.config.options import Model
from eventsinkd.events.templates import FIELDS, template_fields

Format = Literal["standard-webhooks", "cloudevents"]
CE_SOURCE_FIELDS = (*FIELDS, "host")  # host: this machine's name
DEFAULT_SOURCE = "//{host}/nexus/{source}"
DEFAULT_TYPE_PREFIX = "io.bubblefish.nexus"
_REVERSE_DNS = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


class CloudEventsConfig(Model):
    mode: Literal["binary", "structured", "batched"] = Field(
        default="structured",
        description="binary: ce- headers, the body is data; structured: one JSON event; "
        "batched: a JSON array of up to max_batch events (webhook only)",
    )
    source: str = Field(
        default=DEFAULT_SOURCE,
        description="the source attribute, a template (values percent-encoded as path "
        "segments); fields: " + ", ".join(CE_SOURCE_FIELDS),
    )
    type_prefix: str = Field(
        default=DEFAULT_TYPE_PREFIX,
        description="reverse-DNS; the type attribute is <type_prefix>.<event_type>",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        template_fields(v, CE_SOURCE_FIELDS)
        if not v:
            raise ValueError("the source attribute cannot be empty")
        return v

    @field_validator("type_prefix")
    @classmethod
    def _type_prefix(cls, v: str) -> str:
        if not _REVERSE_DNS.fullmatch(v):
            raise ValueError("use a reverse-DNS name such as io.bubblefish.nexus")
        return v
