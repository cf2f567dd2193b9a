"""How events travel: one transport per sink ``type``, behind one small interface.

Everything else a sink does - its queue, workers, batching, retries, pausing,
dead letters, draining, reload handover and counters - is the same for every
type and lives in :mod:`eventsinkd.delivery.sink`. A transport only opens its
connection, sends a batch of at most ``max_batch`` events, and says for each
event what became of it. It never raises for trouble with the receiver: that is
an :class:`Attempt` with a retryable or permanent :class:`Outcome`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventsinkd.transports.contract import Tally, Transport

if TYPE_CHECKING:
    from eventsinkd.config.sinks import SinkConfig


def make_transport(cfg: SinkConfig, truncated: Tally | None = None) -> Transport:
    """The transport for ``cfg.type``; only the chosen one's libraries are imported.

    ``truncated``: counts the messages a syslog sink cut to its ``max_message_bytes``."""
    if cfg.type == "webhook":
        from eventsinkd.transports.webhook import WebhookTransport

        return WebhookTransport(cfg)
    if cfg.type == "syslog":
        if cfg.endpoint.scheme.startswith("syslog+relp"):
            from eventsinkd.transports.syslog_relp import RelpSyslogTransport

            return RelpSyslogTransport(cfg, truncated)
        from eventsinkd.transports.syslog import SyslogTransport

        return SyslogTransport(cfg, truncated)
    if cfg.type == "otlp":
        from eventsinkd.transports.otlp import OtlpTransport

        return OtlpTransport(cfg)
    if cfg.type == "fluentd":
        from eventsinkd.transports.fluentd import FluentdTransport

        return FluentdTransport(cfg)
    from eventsinkd.transports.nats import NatsTransport

    return NatsTransport(cfg)
