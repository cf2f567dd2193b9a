"""The configuration model, validated by pydantic before anything starts.

Keys that Nexus's own ``[daemon.events]`` sink configuration has keep Nexus's
names, meanings and defaults (max_inflight 1000, retry_backoff_seconds
[1, 5, 30, 300], timeout_seconds 5, max_retries 3, content "summary"). The
sinks' own models are in :mod:`eventsinkd.config.sinks`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from eventsinkd.common.paths import is_inside
from eventsinkd.common.secrets import resolve_secret
from eventsinkd.config.options import Model, SecretRef
from eventsinkd.config.sinks import SinkConfig
from eventsinkd.events import MEMORY_WRITTEN, EventType

# What a reload (SIGHUP) does with a key, marked on its field: by default it applies;
# RESTART keys keep their running value until the daemon restarts; SINKS keys apply by
# rebuilding every sink, each of which is built with them.
RESTART: dict[str, Any] = {"reload": "restart"}
SINKS: dict[str, Any] = {"reload": "sinks"}


def keys_marked(model: type[BaseModel], marker: dict[str, Any]) -> list[str]:
    """The fields of ``model`` marked ``marker`` (RESTART or SINKS), in declaration order."""
    return [
        name
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict)
        and field.json_schema_extra.get("reload") == marker["reload"]
    ]


def _produced_by_default() -> list[EventType]:
    return ["memory_written"]


class EventsConfig(Model):
    types: list[EventType] = Field(
        default_factory=_produced_by_default,
        description="event types to produce: memory_written, memory_persisted, memory_write_failed",
        json_schema_extra=RESTART,
    )
    pending_limit: int = Field(
        default=100_000,
        ge=1,
        description="PENDING entries each sink remembers to spot their status events",
        json_schema_extra=RESTART,
    )
    max_inflight: int = Field(
        default=1000, ge=1, description="queue size per sink", json_schema_extra=SINKS
    )
    overflow: Literal["drop", "block"] = Field(
        default="drop",
        description="drop: a full queue drops events (counted), and what was queued at a "
        "stop is lost; block: nothing is dropped, the cursor waits (at-least-once)",
        json_schema_extra=RESTART,
    )
    retry_backoff_seconds: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0, 300.0],
        description="the k-th retry waits the k-th value (the last repeats), +-20% jitter",
        json_schema_extra=SINKS,
    )
    retry_after_max_seconds: float = Field(
        default=300.0,
        ge=0,
        description="a receiver's Retry-After sets the wait, up to this many seconds",
        json_schema_extra=SINKS,
    )
    pause_after_failures: int = Field(
        default=5,
        ge=1,
        description="retryable failures in a row that pause a sink",
        json_schema_extra=SINKS,
    )
    shutdown_timeout_s: float = Field(
        default=10.0, ge=0, description="on SIGTERM, how long the sinks may drain before exit"
    )
    sinks: list[SinkConfig] = Field(
        default_factory=list, description="where events go; each reads the WAL on its own"
    )

    @field_validator("types")
    @classmethod
    def _types(cls, v: list[EventType]) -> list[EventType]:
        if not v:
            raise ValueError("must list at least one event type")
        if len(set(v)) != len(v):
            raise ValueError("lists an event type twice")
        return v

    @property
    def status_types(self) -> frozenset[str]:
        """The status event types produced (none by default)."""
        return frozenset(self.types) - {MEMORY_WRITTEN}

    def unproduced_filters(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Sink filters naming an event type ``types`` does not produce: (key path, problem)."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, sink in enumerate(self.sinks):
            missing = [t for t in sink.filter.event_types if t not in self.types]
            if missing:
                problems.append(
                    (
                        ("events", "sinks", i, "filter", "event_types"),
                        f"events.types ({', '.join(self.types)}) does not produce "
                        f"{', '.join(missing)}: add it there, or drop it here",
                    )
                )
        return problems

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
    dir: Path = Field(
        description="the Nexus WAL directory (<Nexus config dir>/wal); only read, never written"
    )
    mac_key: SecretRef = Field(
        default=None,
        description="Nexus's mac_key_file: env:VAR, file:/path or a literal",
        repr=False,
    )
    start_at: Literal["beginning", "end"] = Field(
        default="end",
        description="where a sink without a saved cursor starts: only new writes (end), or "
        "all the WAL holds (beginning)",
    )
    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="how often the directory is checked where changes are not reported "
        "(force_polling, a watch that is down or missed a change); behind a live watch, "
        "every 10 s",
    )
    force_polling: bool = Field(
        default=False, description="do not use inotify (NFS and other network filesystems)"
    )

    @cached_property
    def mac_key_bytes(self) -> bytes | None:
        return None if self.mac_key is None else resolve_secret(self.mac_key).encode()


class AdminConfig(Model):
    listen: str = Field(
        default="127.0.0.1:9464",
        description="host:port for metrics and health; no authentication: keep it on "
        "loopback or a private interface",
    )

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
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="the least severe messages logged"
    )
    # auto: text when stderr is a terminal (a person watching), JSON lines otherwise.
    format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="auto: text on a terminal, else JSON lines; json: one object a line; text",
    )


class Config(Model):
    wal: WalConfig = Field(description="the Nexus WAL to read", json_schema_extra=RESTART)
    state_dir: Path = Field(
        default=Path("/var/lib/eventsinkd"),
        description="eventsinkd's own state: each sink's cursor, the dead letters, a lock; "
        "never inside wal.dir",
        json_schema_extra=RESTART,
    )
    state_save_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="how often each sink's delivered position is saved (and at a stop)",
        json_schema_extra=RESTART,
    )
    events: EventsConfig = Field(
        default_factory=EventsConfig, description="what is produced and where it goes"
    )
    dead_letters: DeadLettersConfig = Field(
        default_factory=DeadLettersConfig,
        description="events the sinks gave up on (eventsinkd dead-letters)",
        json_schema_extra=RESTART,
    )
    admin: AdminConfig = Field(
        default_factory=AdminConfig,
        description="the HTTP server of /metrics, /healthz, /readyz and /status",
        json_schema_extra=RESTART,
    )
    log: LogConfig = Field(default_factory=LogConfig, description="log lines on stderr")

    def restart_only_changes(self, new: Config) -> list[str]:
        """The keys ``new`` changes that a reload does not apply (dotted key paths)."""
        changed = [k for k in keys_marked(Config, RESTART) if getattr(self, k) != getattr(new, k)]
        changed += [
            f"events.{k}"
            for k in keys_marked(EventsConfig, RESTART)
            if getattr(self.events, k) != getattr(new.events, k)
        ]
        return changed

    def reloaded(self, new: Config) -> Config:
        """What a reload to ``new`` runs: its keys, but the running value of each key that
        applies only after a restart."""
        events = new.events.model_copy(
            update={k: getattr(self.events, k) for k in keys_marked(EventsConfig, RESTART)}
        )
        return self.model_copy(update={"events": events, "log": new.log})

    @field_validator("state_dir")
    @classmethod
    def _state_outside_wal(cls, v: Path, info: ValidationInfo) -> Path:
        wal = info.data.get("wal")  # validated first: it is declared first
        if wal is not None and is_inside(v, wal.dir):
            raise ValueError("must not be inside wal.dir: eventsinkd never writes there")
        return v
