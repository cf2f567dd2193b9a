"""What every sink's configuration shares: the base model, filters, TLS, secret references,
the keys every sink has (:class:`SinkBase`), batching (:class:`Batched`) and endpoints.

Each ``type``'s own model is in :mod:`eventsinkd.config.sinks`.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from eventsinkd.common.secrets import (
    SecretError,
    is_reference,
    redact_url,
    remember_url,
    resolve_secret,
)
from eventsinkd.config.proxy import parse_proxy_url
from eventsinkd.events import EventType
from eventsinkd.events.transform import Transform, compile_error

_SINK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_CONCURRENCY = 1024
# The default cap on concurrency: auto. Measured against a 10 ms receiver on the 2-core
# machine (BENCHMARKS.md): auto settles at 55-80 requests in flight there, so a cap of 64
# held it below what the receiver took.
DEFAULT_MAX_CONCURRENCY = 128
# none: no order kept; wal: everything in WAL order (as concurrency 1); subject, source,
# destination: each value's events in WAL order, different values in parallel.
Order = Literal["none", "wal", "subject", "source", "destination"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilterConfig(Model):
    """Which events a sink receives; an empty list matches everything."""

    event_types: list[EventType] = Field(
        default_factory=list, description="among events.types, e.g. [memory_persisted]"
    )
    source: list[str] = Field(default_factory=list, description="glob patterns")
    subject: list[str] = Field(default_factory=list, description="glob patterns")
    destination: list[str] = Field(default_factory=list, description="glob patterns")
    actor_type: list[str] = Field(default_factory=list, description="glob patterns")


class TlsConfig(Model):
    verify: bool = Field(default=True, description="verify the server's certificate")
    ca_file: Path | None = Field(default=None, description="an extra CA bundle (PEM)")
    cert_file: Path | None = Field(
        default=None, description="a client certificate (PEM) for mutual TLS"
    )
    key_file: Path | None = Field(default=None, description="its key, if not in cert_file")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set but cert_file is not")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file")
        return self


def check_secret_ref(ref: str | None) -> str | None:
    if ref is not None:
        try:
            resolve_secret(ref)
        except SecretError as exc:
            raise ValueError(str(exc)) from None
    return ref


SecretRef = Annotated[str | None, AfterValidator(check_secret_ref)]


def proxy_url(value: str) -> str:
    """The proxy URL a ``proxy`` setting gives: itself, or what its env:/file: reference holds
    (remembered, so that its password never shows in a log line)."""
    url = resolve_secret(value.strip()) if is_reference(value.strip()) else value
    remember_url(url)
    return url


def check_proxy(value: str | None) -> str | None:
    """``none``, ``http://[user:password@]host:port``, or a reference to one (env:VAR,
    file:/path): an HTTP sink's ``proxy``."""
    if value is None or value.strip().lower() == "none":
        return value
    try:
        url = proxy_url(value)
    except SecretError as exc:
        raise ValueError(str(exc)) from None
    parse_proxy_url(url)  # ValueError says what is wrong, never with the URL's password
    return value


ProxySetting = Annotated[
    str | None,
    AfterValidator(check_proxy),
    Field(
        default=None,
        description="none, or http://[user:password@]host:port (or env:VAR, file:/path "
        "holding it); unset: HTTPS_PROXY, HTTP_PROXY and NO_PROXY as curl reads them",
        repr=False,
    ),
]


class SinkBase(Model):
    """What every sink has, whatever carries its events (``type``)."""

    name: Annotated[str, Field(description="unique; the sink label of every metric")]
    timeout_seconds: float = Field(default=5.0, gt=0, description="per request")
    max_retries: int = Field(
        default=3, ge=0, description="retries after the first attempt; then a dead letter"
    )
    retry_backoff_seconds: list[float] | None = Field(
        default=None, description="overrides events.retry_backoff_seconds"
    )
    content: Literal["summary", "full"] = Field(
        default="summary", description="full adds the memory itself as content"
    )
    concurrency: int | Literal["auto"] = Field(
        default="auto",
        description="requests (batches) in flight: auto (adaptive), or a number that pins it",
    )
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        ge=1,
        le=MAX_CONCURRENCY,
        description="the most that auto lets in flight",
    )
    order: Order = Field(default="none", description="what keeps WAL order: nothing, all, a key")
    rate_limit: float | None = Field(
        default=None, gt=0, description="events per second at most; null = no limit"
    )
    start_at: Literal["beginning", "end"] | None = Field(
        default=None,
        description="where a sink without a saved cursor starts; default wal.start_at",
    )
    filter: FilterConfig = Field(
        default_factory=FilterConfig, description="which events this sink receives"
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="for https and TLS schemes")
    transform: str | None = Field(
        default=None,
        description="a jq program: the event's body in, the body to send out (one object; "
        "empty or null: not sent)",
    )

    @field_validator("transform")
    @classmethod
    def _jq_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            problem = compile_error(v)
            if problem is not None:
                raise ValueError(f"the jq program does not compile: {problem}")
        return v

    @cached_property
    def transformer(self) -> Transform | None:
        """The compiled ``transform`` (compiled once per loaded config)."""
        return None if self.transform is None else Transform(self.transform, self.name)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, v: str) -> str:
        if not _SINK_NAME.fullmatch(v):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.'")
        return v

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency(cls, v: object) -> object:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_CONCURRENCY:
            raise ValueError(f"use auto, or a number of requests from 1 to {MAX_CONCURRENCY}")
        return v

    @model_validator(mode="after")
    def _concurrency_fits(self) -> SinkBase:
        pinned = self.concurrency
        if pinned == "auto":
            return self
        if "max_concurrency" in self.model_fields_set and self.max_concurrency < pinned:
            raise ValueError(
                f"max_concurrency {self.max_concurrency} is below concurrency {pinned}: a "
                "number pins the concurrency (max_concurrency caps only concurrency: auto)"
            )
        if self.order == "wal" and pinned != 1:
            raise ValueError(
                f"order: wal sends one request at a time, so it cannot have concurrency {pinned} "
                "(leave concurrency out, or use order: subject, source or destination)"
            )
        return self

    @field_validator("retry_backoff_seconds")
    @classmethod
    def _backoff(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(x < 0 for x in v)):
            raise ValueError("must be a non-empty list of seconds >= 0")
        return v

    @property
    def wal_order(self) -> bool:
        """Everything in WAL order, one request at a time (``concurrency: 1`` or ``order: wal``)."""
        return self.concurrency == 1 or self.order == "wal"

    @property
    def adaptive(self) -> bool:
        """Whether the number of requests in flight adapts to the receiver (``auto``)."""
        return self.concurrency == "auto" and not self.wal_order

    @property
    def max_requests(self) -> int:
        """The most requests (batches) in flight at once: what transports size their
        connection pools for."""
        if self.wal_order:
            return 1
        return self.max_concurrency if self.concurrency == "auto" else self.concurrency

    @property
    def order_key(self) -> Literal["subject", "source", "destination"] | None:
        """The entry field whose events keep their WAL order among themselves; None when none
        does (``order: none``) or everything does (``wal_order``)."""
        order = self.order
        if self.wal_order or order == "none" or order == "wal":
            return None
        return order

    @property
    def batch_size(self) -> int:
        """Events per request (the transport's batch); 1 for transports that send one by one."""
        return 1

    @property
    def linger_s(self) -> float:
        return 0.0

    @property
    def target(self) -> str:
        """Where the events go, for logs and /status (never a secret)."""
        url = getattr(self, "url", "")
        shown = getattr(url, "shown", None)  # a SecretUrl knows how it may be shown
        return shown if isinstance(shown, str) else redact_url(str(url))


class Batched(SinkBase):
    """A transport that carries several events per request."""

    # With the default max_inflight (1,000), five full batches can be out at once: most of
    # the time one fills while the others are in flight.
    max_batch: int = Field(default=200, ge=1, le=10_000, description="events per request")
    linger_ms: float = Field(
        default=5.0, ge=0, le=1000, description="how long a batch waits to fill"
    )

    @property
    def batch_size(self) -> int:
        return self.max_batch

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000


class Endpoint(NamedTuple):
    scheme: str
    host: str
    port: int


def parse_endpoint(url: str, schemes: dict[str, int]) -> Endpoint:
    """``scheme://host[:port]`` with one of ``schemes`` (scheme -> default port)."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"the scheme must be one of {', '.join(f'{s}://' for s in schemes)}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("give only scheme://host:port")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if not parts.hostname:
        raise ValueError("a host is required")
    return Endpoint(parts.scheme, parts.hostname, port or schemes[parts.scheme])
