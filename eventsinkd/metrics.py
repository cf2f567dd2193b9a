"""Prometheus metrics. Nexus's three counters keep their names; the rest are ``eventsinkd_*``.

Each :class:`Metrics` has its own registry, so tests (and reloads) never collide
with a process-wide default registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.delivered = Counter(
            "bubblefish_events_delivered_total",
            "Events a sink accepted (2xx).",
            ["sink"],
            registry=r,
        )
        self.failed = Counter(
            "bubblefish_events_failed_total",
            "Events given up on (permanent failure or retries exhausted).",
            ["sink"],
            registry=r,
        )
        self.dropped = Counter(
            "bubblefish_events_dropped_total",
            "Events dropped because the sink's queue was full (or left at shutdown).",
            ["sink"],
            registry=r,
        )
        self.offered = Counter(
            "eventsinkd_events_offered_total",
            "Events handed to a sink (after its filter).",
            ["sink"],
            registry=r,
        )
        self.attempts = Counter(
            "eventsinkd_delivery_attempts_total",
            "HTTP attempts by outcome class.",
            ["sink", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "eventsinkd_delivery_retries_total",
            "Attempts scheduled again after a retryable outcome.",
            ["sink"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "eventsinkd_delivery_latency_seconds",
            "From the entry's WAL timestamp to the sink's 2xx.",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "eventsinkd_request_duration_seconds",
            "Duration of one HTTP attempt.",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "eventsinkd_queue_depth",
            "Events accepted by a sink and not yet finished.",
            ["sink"],
            registry=r,
        )
        self.last_success = Gauge(
            "eventsinkd_last_success_timestamp_seconds",
            "Unix time of the last 2xx.",
            ["sink"],
            registry=r,
        )
        self.last_failure = Gauge(
            "eventsinkd_last_failure_timestamp_seconds",
            "Unix time of the last failed attempt.",
            ["sink"],
            registry=r,
        )
        self.reloads = Counter(
            "eventsinkd_config_reloads_total",
            "Config reloads (SIGHUP) by result.",
            ["result"],
            registry=r,
        )
