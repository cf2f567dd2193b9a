"""A sink's ``format: cloudevents`` options (CloudEvents 1.0; for webhook and nats sinks), and
the keys a webhook sink has for them (:class:`WebhookShaping`: batching in batched mode)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from eventsinkd.config.options import Model, SinkBase
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


def format_keys(fmt: str, options: CloudEventsConfig) -> None:
    """``cloudevents:`` options other than the defaults go with ``format: cloudevents``."""
    if options != CloudEventsConfig() and fmt != "cloudevents":
        raise ValueError("cloudevents options are for format: cloudevents (add it, or remove them)")


DEFAULT_MAX_BATCH = 200
DEFAULT_LINGER_MS = 5.0


class WebhookShaping(SinkBase):
    """A webhook sink's format; it batches only in CloudEvents batched mode."""

    format: Format = Field(
        default="standard-webhooks", description="standard-webhooks (Nexus's body) or cloudevents"
    )
    cloudevents: CloudEventsConfig = Field(
        default_factory=CloudEventsConfig,
        description="with format: cloudevents: mode, source and type_prefix",
    )
    max_batch: int = Field(
        default=DEFAULT_MAX_BATCH,
        ge=1,
        le=10_000,
        description="events per request (cloudevents batched only)",
    )
    linger_ms: float = Field(
        default=DEFAULT_LINGER_MS,
        ge=0,
        le=1000,
        description="how long a batch waits to fill (batched only)",
    )

    @model_validator(mode="after")
    def _batching(self) -> WebhookShaping:
        format_keys(self.format, self.cloudevents)
        # Their defaults may be written out (config.example.yaml does).
        given = []
        if self.max_batch != DEFAULT_MAX_BATCH:
            given.append("max_batch")
        if self.linger_ms != DEFAULT_LINGER_MS:
            given.append("linger_ms")
        if given and not self.batched:
            raise ValueError(
                f"{' and '.join(given)}: a webhook sink sends one event per request "
                "unless format: cloudevents has cloudevents.mode: batched"
            )
        return self

    @property
    def batched(self) -> bool:
        return self.format == "cloudevents" and self.cloudevents.mode == "batched"

    @property
    def batch_size(self) -> int:
        return self.max_batch if self.batched else 1

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000 if self.batched else 0.0
