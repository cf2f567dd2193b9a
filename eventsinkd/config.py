"""The configuration model, validated by pydantic before anything starts.

Keys that Nexus's own ``[daemon.events]`` sink configuration has keep Nexus's
names, meanings and defaults (max_inflight 1000, retry_backoff_seconds
[1, 5, 30, 300], timeout_seconds 5, max_retries 3, content "summary").
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from eventsinkd.secrets import SecretError, resolve_secret

WHSEC_PREFIX = "whsec_"
RESERVED_HEADERS = frozenset(
    {"content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
_SINK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilterConfig(Model):
    """Which events a sink receives; an empty list matches everything."""

    event_types: list[str] = Field(default_factory=list)
    source: list[str] = Field(default_factory=list, description="glob patterns")
    subject: list[str] = Field(default_factory=list, description="glob patterns")
    destination: list[str] = Field(default_factory=list, description="glob patterns")
    actor_type: list[str] = Field(default_factory=list, description="glob patterns")


class TlsConfig(Model):
    verify: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set but cert_file is not")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file")
        return self


def decode_whsec(value: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64>``."""
    if not value.startswith(WHSEC_PREFIX):
        raise ValueError("a webhook secret must start with whsec_")
    try:
        key = base64.b64decode(value[len(WHSEC_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes of key")
    return key


def _check_secret(ref: str) -> str:
    try:
        decode_whsec(resolve_secret(ref))
    except SecretError as exc:
        raise ValueError(str(exc)) from None
    return ref


class SinkConfig(Model):
    name: Annotated[str, Field(description="unique; the sink label of every metric")]
    url: AnyHttpUrl
    timeout_seconds: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    retry_backoff_seconds: list[float] | None = Field(
        default=None, description="overrides events.retry_backoff_seconds"
    )
    content: Literal["summary", "full"] = "summary"
    concurrency: int = Field(default=4, ge=1, le=1024)
    secrets: list[Annotated[str, AfterValidator(_check_secret)]] = Field(
        default_factory=list,
        description="whsec_... secrets (literal, env:VAR or file:/path); several = rotation",
        repr=False,
    )
    headers: dict[str, str] = Field(default_factory=dict)
    start_at: Literal["beginning", "end"] | None = Field(
        default=None,
        description="where a sink without a saved cursor starts; default wal.start_at",
    )
    filter: FilterConfig = Field(default_factory=FilterConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)

    @model_validator(mode="before")
    @classmethod
    def _secret_alias(cls, data: object) -> object:
        # `secret: x` is accepted as the one-element form of `secrets: [x]`.
        if isinstance(data, dict) and "secret" in data:
            data = dict(data)
            if "secrets" in data:
                raise ValueError("give either secret or secrets, not both")
            secret = data.pop("secret")
            data["secrets"] = [secret] if secret is not None else []
        return data

    @field_validator("name")
    @classmethod
    def _name_shape(cls, v: str) -> str:
        if not _SINK_NAME.fullmatch(v):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.'")
        return v

    @field_validator("retry_backoff_seconds")
    @classmethod
    def _backoff(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(x < 0 for x in v)):
            raise ValueError("must be a non-empty list of seconds >= 0")
        return v

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(k for k in v if k.lower() in RESERVED_HEADERS)
        if clash:
            raise ValueError(f"header(s) {', '.join(clash)} are set by eventsinkd itself")
        return v

    @cached_property
    def signing_keys(self) -> list[bytes]:
        return [decode_whsec(resolve_secret(ref)) for ref in self.secrets]


class EventsConfig(Model):
    max_inflight: int = Field(default=1000, ge=1, description="queue size per sink")
    overflow: Literal["drop", "block"] = "drop"
    retry_backoff_seconds: list[float] = Field(default_factory=lambda: [1.0, 5.0, 30.0, 300.0])
    retry_after_max_seconds: float = Field(default=300.0, ge=0)
    pause_after_failures: int = Field(
        default=5, ge=1, description="retryable failures in a row that pause a sink"
    )
    shutdown_timeout_s: float = Field(default=10.0, ge=0)
    sinks: list[SinkConfig] = Field(default_factory=list)

    @field_validator("retry_backoff_seconds")
    @classmethod
    def _backoff(cls, v: list[float]) -> list[float]:
        if not v or any(x < 0 for x in v):
            raise ValueError("must be a non-empty list of seconds >= 0")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> EventsConfig:
        seen: set[str] = set()
        for sink in self.sinks:
            if sink.name in seen:
                raise ValueError(f"duplicate sink name {sink.name!r}")
            seen.add(sink.name)
        return self

    def backoff_for(self, sink: SinkConfig) -> list[float]:
        return sink.retry_backoff_seconds or self.retry_backoff_seconds


class WalConfig(Model):
    dir: Path
    mac_key: str | None = Field(
        default=None,
        description="Nexus's mac_key_file: env:VAR, file:/path or a literal",
        repr=False,
    )
    start_at: Literal["beginning", "end"] = "end"
    poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    force_polling: bool = False

    @field_validator("mac_key")
    @classmethod
    def _resolvable(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                resolve_secret(v)
            except SecretError as exc:
                raise ValueError(str(exc)) from None
        return v

    @cached_property
    def mac_key_bytes(self) -> bytes | None:
        return None if self.mac_key is None else resolve_secret(self.mac_key).encode()


class AdminConfig(Model):
    listen: str = Field(default="127.0.0.1:9464", description="host:port for metrics and health")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class DeadLettersConfig(Model):
    max_mb: float = Field(default=100.0, gt=0, description="per sink; the oldest are evicted")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


class LogConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class Config(Model):
    wal: WalConfig
    state_dir: Path = Path("/var/lib/eventsinkd")
    state_save_interval_s: float = Field(default=1.0, gt=0, le=3600)
    events: EventsConfig = Field(default_factory=EventsConfig)
    dead_letters: DeadLettersConfig = Field(default_factory=DeadLettersConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("state_dir")
    @classmethod
    def _state_outside_wal(cls, v: Path, info: ValidationInfo) -> Path:
        from eventsinkd.wal.position import is_inside

        wal = info.data.get("wal")  # validated first: it is declared first
        if wal is not None and is_inside(v, wal.dir):
            raise ValueError("must not be inside wal.dir: eventsinkd never writes there")
        return v
