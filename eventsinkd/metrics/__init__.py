"""Prometheus metrics. Nexus's three counters keep their names; the rest are ``eventsinkd_*``.

Each :class:`Metrics` has its own registry, so tests (and reloads) never collide
with a process-wide default registry. Figures that would cost something per
event (reader counters, lag, dead letters) are read at scrape time from a
:class:`DaemonView` by :class:`DaemonCollector`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eventsinkd.metrics.tallies import SinkTallies, TallyCollector
from eventsinkd.wal.gotime import parse_go_time
from eventsinkd.wal.lines import Reject
from eventsinkd.wal.reading import ReaderStats
from eventsinkd.wal.statuses import GONE, LIMIT, StatusWatch

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The figures a delivered event updates: plain numbers, metrics at scrape time.
        self.sink_tallies: dict[str, SinkTallies] = {}
        r.register(TallyCollector(self.sink_tallies))
        self.truncated = Counter(
            "eventsinkd_messages_truncated_total",
            "Messages cut to the sink's size limit (syslog oversize: truncate).",
            ["sink"],
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
        self.paused = Gauge(
            "eventsinkd_sink_paused",
            "1 while a sink is paused by a failing receiver (probing, taking no new events).",
            ["sink"],
            registry=r,
        )
        self.concurrency = Gauge(
            "eventsinkd_sink_concurrency",
            "Requests (batches) a sink may have in flight now: fixed, or adapted to the receiver.",
            ["sink"],
            registry=r,
        )
        self.reloads = Counter(
            "eventsinkd_config_reloads_total",
            "Config reloads (SIGHUP) by result.",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):  # at 0 from the start, so increase() sees the first
            self.reloads.labels(result)


class SinkMetrics:
    """One sink's per-event figures (:mod:`eventsinkd.metrics.tallies`), looked up once by name."""

    def __init__(self, m: Metrics, sink: str) -> None:
        self._m, self._sink = m, sink
        t = m.sink_tallies.get(sink)
        if t is None:
            t = m.sink_tallies[sink] = SinkTallies(LATENCY_BUCKETS)
        self.delivered = t.delivered
        self.failed = t.failed
        self.dropped = t.dropped
        self.filtered = t.filtered
        self.offered = t.offered
        self.retries = t.retries
        self.latency = t.latency
        self.duration = t.duration
        self.attempts = t.attempts

    def watch(
        self,
        *,
        queue_depth: Callable[[], float],
        last_success: Callable[[], float],
        last_failure: Callable[[], float],
        paused: Callable[[], float],
        concurrency: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time from the sink itself."""
        m, sink = self._m, self._sink
        m.queue_depth.labels(sink).set_function(queue_depth)
        m.last_success.labels(sink).set_function(last_success)
        m.last_failure.labels(sink).set_function(last_failure)
        m.paused.labels(sink).set_function(paused)
        m.concurrency.labels(sink).set_function(concurrency)


class Lag(NamedTuple):
    events: int  # held by the sink, plus an estimate of those not read yet
    bytes: int  # WAL bytes not read yet by the cursor
    seconds: float  # age (WAL time) of the oldest undelivered entry; 0 when caught up


def lag_seconds(wal_timestamp: str) -> float:
    ts = parse_go_time(wal_timestamp) if wal_timestamp else None
    return max(0.0, time.time() - ts) if ts is not None else 0.0


class DaemonView(Protocol):
    """What the admin server and the collector read from the running daemon."""

    @property
    def ready(self) -> bool: ...

    def problems(self) -> list[str]: ...

    def state_error_counts(self) -> dict[str, int]:
        """Failed writes of the daemon's own state since start, by kind."""
        ...

    def reader_stats(self) -> ReaderStats | None: ...

    def sink_lags(self) -> dict[str, Lag]: ...

    def dead_letters_by_sink(self) -> dict[str, tuple[int, int]]:
        """(letters held, letters evicted since start) by sink."""
        ...

    def status_watches(self) -> dict[str, StatusWatch]:
        """The PENDING entries each sink follows for status events (sinks that do)."""
        ...


class DaemonCollector(Collector):
    """Reader, lag and dead-letter figures, read at scrape time (nothing on the hot path)."""

    def __init__(self, view: DaemonView) -> None:
        self.view = view

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self._reader()
        lags = self.view.sink_lags()
        for name, help_text, field in (
            ("eventsinkd_sink_lag_seconds", "WAL age of a sink's oldest undelivered entry.", 2),
            ("eventsinkd_sink_lag_bytes", "WAL bytes a sink's cursor has not read yet.", 1),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["sink"])
            for sink, lag in sorted(lags.items()):
                family.add_metric([sink], float(lag[field]))
            yield family
        if lags:
            yield GaugeMetricFamily(
                "eventsinkd_wal_bytes_behind",
                "WAL bytes not yet read by every sink's cursor (the most behind).",
                value=max(lag.bytes for lag in lags.values()),
            )
            yield GaugeMetricFamily(
                "eventsinkd_wal_seconds_behind",
                "The largest sink lag in seconds (see eventsinkd_sink_lag_seconds).",
                value=max(lag.seconds for lag in lags.values()),
            )
        held = GaugeMetricFamily(
            "eventsinkd_dead_letters", "Dead letters held in the state directory.", labels=["sink"]
        )
        evicted = CounterMetricFamily(
            "eventsinkd_dead_letters_evicted",
            "Dead letters evicted (oldest first) because the store was full.",
            labels=["sink"],
        )
        for sink, (n_held, n_evicted) in sorted(self.view.dead_letters_by_sink().items()):
            held.add_metric([sink], n_held)
            evicted.add_metric([sink], n_evicted)
        yield held
        yield evicted
        yield from self._statuses()
        errors = CounterMetricFamily(
            "eventsinkd_state_errors",
            "Failed writes of eventsinkd's own state (cursor, dead_letters, control); "
            "/status lists the ones failing now.",
            labels=["kind"],
        )
        for kind, n in sorted(self.view.state_error_counts().items()):
            errors.add_metric([kind], n)
        yield errors
        yield GaugeMetricFamily(
            "eventsinkd_ready",
            "1 when the WAL is readable, the reader runs and state writes succeed.",
            value=1.0 if self.view.ready else 0.0,
        )

    def _statuses(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        watches = self.view.status_watches()
        if not watches:
            return
        pending = GaugeMetricFamily(
            "eventsinkd_status_pending_entries",
            "PENDING entries a sink follows for their status events.",
            labels=["sink"],
        )
        forgotten = CounterMetricFamily(
            "eventsinkd_status_forgotten",
            "PENDING entries given up on without a status event: events.pending_limit reached "
            "(limit), or their segment or line gone (gone).",
            labels=["sink", "reason"],
        )
        for sink, watch in sorted(watches.items()):
            pending.add_metric([sink], watch.pending)
            for reason in (LIMIT, GONE):
                forgotten.add_metric([sink, reason], watch.forgotten[reason])
        yield pending
        yield forgotten

    def _reader(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        st = self.view.reader_stats()
        if st is None:
            return
        yield CounterMetricFamily(
            "eventsinkd_wal_lines_read", "WAL lines read (complete lines).", value=st.lines
        )
        entries = CounterMetricFamily(
            "eventsinkd_wal_entries", "WAL entries decoded, by entry type.", labels=["entry_type"]
        )
        for kind, n in sorted(st.entries.items()):
            entries.add_metric([kind or "data"], n)
        yield entries
        rejected = CounterMetricFamily(
            "eventsinkd_wal_lines_rejected", "WAL lines skipped, by reason.", labels=["reason"]
        )
        for reason in Reject:
            rejected.add_metric([reason.value], st.rejected.get(reason.value, 0))
        yield rejected
        yield CounterMetricFamily(
            "eventsinkd_wal_duplicates",
            "Entries skipped because their idempotency key was just seen (rotation crash).",
            value=st.duplicates,
        )
        yield CounterMetricFamily(
            "eventsinkd_wal_rewrites", "Segment rewrites (new inode) noticed.", value=st.rewrites
        )
        yield GaugeMetricFamily(
            "eventsinkd_wal_segments", "Segment files in the WAL directory.", value=st.segments
        )
