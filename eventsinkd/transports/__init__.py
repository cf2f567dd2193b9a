"""How events travel: one transport per sink ``type``, behind one small interface.

Everything else a sink does - its queue, workers, batching, retries, pausing,
dead letters, draining, reload handover and counters - is the same for every
type and lives in :mod:`eventsinkd.delivery.sink`. A transport only opens its
connection, sends a batch of at most ``max_batch`` events, and says for each
event what became of it. It never raises for trouble with the receiver: that is
an :class:`Attempt` with a retryable or permanent :class:`Outcome`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from eventsinkd.delivery.outcome import Outcome

if TYPE_CHECKING:
    from eventsinkd.events import Event
    from eventsinkd.metrics import Metrics
    from eventsinkd.sinkconfig import SinkConfig


class Attempt(NamedTuple):
    outcome: Outcome
    retry_after: float | None  # seconds the receiver asked us to wait (Retry-After)
    detail: str  # for logs, /status and dead letters: "HTTP 503", "connection refused"...


class Transport(Protocol):
    max_batch: int  # at most this many events per send()

    async def open(self) -> None:
        """Get ready to send (a session, a connection). A receiver that is down is not an error:
        sending fails until it is back."""

    async def send(self, events: Sequence[Event]) -> Sequence[Attempt]:
        """Send ``events`` once; one attempt per event, in the same order. Never raises for
        trouble with the receiver."""

    async def close(self) -> None:
        """Release what :meth:`open` took; safe to call more than once."""


def all_failed(events: Sequence[Event], attempt: Attempt) -> list[Attempt]:
    """The same attempt for every event of a batch (the request as a whole failed)."""
    return [attempt] * len(events)


def make_transport(cfg: SinkConfig, metrics: Metrics | None = None) -> Transport:
    """The transport for ``cfg.type``; only the chosen one's libraries are imported."""
    if cfg.type == "webhook":
        from eventsinkd.transports.webhook import WebhookTransport

        return WebhookTransport(cfg)
    if cfg.type == "syslog":
        if cfg.endpoint.scheme.startswith("syslog+relp"):
            from eventsinkd.transports.syslog_relp import RelpSyslogTransport

            return RelpSyslogTransport(cfg, metrics)
        from eventsinkd.transports.syslog import SyslogTransport

        return SyslogTransport(cfg, metrics)
    if cfg.type == "otlp":
        from eventsinkd.transports.otlp import OtlpTransport

        return OtlpTransport(cfg)
    if cfg.type == "fluentd":
        from eventsinkd.transports.fluentd import FluentdTransport

        return FluentdTransport(cfg)
    from eventsinkd.transports.nats import NatsTransport

    return NatsTransport(cfg)
