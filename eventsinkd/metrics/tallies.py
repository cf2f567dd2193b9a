"""The per-event sink figures: plain numbers on the event loop, made metrics at scrape time.

A delivered webhook event updates five metrics (offered, the request's duration, its
attempt, delivered, its latency). With prometheus-client's own, each ``inc`` or
``observe`` takes a lock and a histogram finds its bucket in a Python loop: 4.3 µs an
event in all, against 1.9 µs now, one of them the parse of the entry's WAL time
(``python -m bench.stages``, "metrics of a delivered event"). Everything that updates
these runs on the event loop's thread, and so do scrapes (the admin server runs on the
same loop), so nothing needs a lock: here an update is an addition, a bucket is found by
bisection, and :class:`TallyCollector` turns the numbers into the same metric families
(names, help, labels, buckets; only the ``_created`` samples are left out) when
``/metrics`` is read.

A sink's tallies live as long as the :class:`~eventsinkd.metrics.Metrics` they belong to,
by sink name, like a labelled metric: a reloaded sink carries on from its predecessor's
numbers, and a removed one keeps its last values.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from prometheus_client import utils
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from eventsinkd.transports.contract import Outcome

# How prometheus-client writes a bucket's bound ("0.005", "1.0", "+Inf"); untyped there.
_bound = cast(Callable[[float], str], utils.floatToGoString)


class Tally:
    """A counter's value for one set of labels."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Buckets:
    """A histogram's buckets for one set of labels (counts per bucket, not cumulative)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((_bound(bound), float(total)))
        return out


class SinkTallies:
    """One sink's numbers."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.delivered = Tally()
        self.failed = Tally()
        self.dropped = Tally()
        self.filtered = Tally()
        self.offered = Tally()
        self.retries = Tally()
        self.attempts = {o: Tally() for o in Outcome}
        self.latency = Buckets(buckets)
        self.duration = Buckets(buckets)


# name (without _total), help, the SinkTallies attribute
COUNTERS = (
    (
        "bubblefish_events_delivered",
        "Events a sink accepted (2xx; for other types, see the README).",
        "delivered",
    ),
    (
        "bubblefish_events_failed",
        "Events given up on (permanent failure or retries exhausted).",
        "failed",
    ),
    (
        "bubblefish_events_dropped",
        "Events dropped because the sink's queue was full (or left at shutdown).",
        "dropped",
    ),
    ("eventsinkd_events_offered", "Events handed to a sink (after its filter).", "offered"),
    (
        "eventsinkd_events_filtered",
        "Events a sink's transform made empty or null: not sent, finished.",
        "filtered",
    ),
    (
        "eventsinkd_delivery_retries",
        "Attempts scheduled again after a retryable outcome.",
        "retries",
    ),
)
HISTOGRAMS = (
    (
        "eventsinkd_delivery_latency_seconds",
        "From the entry's WAL timestamp to the sink's 2xx.",
        "latency",
    ),
    (
        "eventsinkd_request_duration_seconds",
        "Duration of one request (one event, or one batch).",
        "duration",
    ),
)


class TallyCollector(Collector):
    def __init__(self, sinks: dict[str, SinkTallies]) -> None:
        self.sinks = sinks

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        sinks = sorted(self.sinks.items())
        for name, help_text, attr in COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["sink"])
            for sink, t in sinks:
                tally: Tally = getattr(t, attr)
                family.add_metric([sink], tally.value)
            yield family
        attempts = CounterMetricFamily(
            "eventsinkd_delivery_attempts",
            "Attempts (per event) by outcome class.",
            labels=["sink", "outcome"],
        )
        for sink, t in sinks:
            for outcome, tally in t.attempts.items():
                attempts.add_metric([sink, outcome.value], tally.value)
        yield attempts
        for name, help_text, attr in HISTOGRAMS:
            hist = HistogramMetricFamily(name, help_text, labels=["sink"])
            for sink, t in sinks:
                b: Buckets = getattr(t, attr)
                hist.add_metric([sink], b.cumulative(), b.sum)
            yield hist
