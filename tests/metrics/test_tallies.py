"""The per-event sink figures (eventsinkd.metrics.tallies) read at scrape time exactly as
prometheus-client's own counters and histograms would show the same updates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from eventsinkd.metrics import LATENCY_BUCKETS, Metrics, SinkMetrics
from eventsinkd.transports.contract import Outcome

values = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),  # on a bound: le is "less than or equal"
        st.floats(min_value=0, max_value=5000, allow_nan=False),
    ),
    max_size=40,
)


def exposition(registry: CollectorRegistry, names: tuple[str, ...]) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return sorted(
        line
        for line in lines
        if line.startswith(names) and "_created" not in line and not line.startswith("#")
    )


@given(latencies=values, durations=values, delivered=st.integers(0, 10**6))
def test_the_same_samples_as_prometheus_client(
    latencies: list[float], durations: list[float], delivered: int
) -> None:
    ours = Metrics()
    sink = SinkMetrics(ours, "s")
    theirs = CollectorRegistry()
    latency = Histogram(
        "eventsinkd_delivery_latency_seconds",
        "",
        ["sink"],
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    ).labels("s")
    duration = Histogram(
        "eventsinkd_request_duration_seconds",
        "",
        ["sink"],
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    ).labels("s")
    count = Counter("bubblefish_events_delivered", "", ["sink"], registry=theirs).labels("s")
    for v in latencies:
        sink.latency.observe(v)
        latency.observe(v)
    for v in durations:
        sink.duration.observe(v)
        duration.observe(v)
    sink.delivered.inc(delivered)
    count.inc(delivered)
    names = (
        "eventsinkd_delivery_latency_seconds",
        "eventsinkd_request_duration_seconds",
        "bubblefish_events_delivered",
    )
    assert exposition(ours.registry, names) == exposition(theirs, names)


def test_a_sink_of_the_same_name_carries_on_and_every_sink_is_shown() -> None:
    m = Metrics()
    first = SinkMetrics(m, "a")
    first.offered.inc(2)
    first.attempts[Outcome.TIMEOUT].inc()
    SinkMetrics(m, "a").offered.inc()  # reloaded: the same figures
    SinkMetrics(m, "b")  # a new sink shows zeros at once
    text = generate_latest(m.registry).decode()
    assert 'eventsinkd_events_offered_total{sink="a"} 3.0' in text
    assert 'eventsinkd_events_offered_total{sink="b"} 0.0' in text
    assert 'eventsinkd_delivery_attempts_total{outcome="timeout",sink="a"} 1.0' in text
    for outcome in Outcome:
        assert (
            f'eventsinkd_delivery_attempts_total{{outcome="{outcome.value}",sink="b"}} 0.0' in text
        )
