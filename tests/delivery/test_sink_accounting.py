"""The sink's accounting rule, as a property over random outcomes, reloads and shutdowns.

    offered = delivered + failed + dropped + filtered + held

holds at every moment (summed over a sink and the successor a reload gave it), and a
stopped sink holds nothing. The transport is a stand-in that answers each attempt with
a drawn outcome (the one thing mocked: the rule is about the sink around it; every
real transport has its own tests against a real server). With a ``transform`` (a real jq
program) some events are filtered (finished as they are taken) and some make the program
fail (dead letters, counted as failed).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence

from engine_harness import entry, events_cfg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventsinkd.delivery.job import SinkStats
from eventsinkd.delivery.sink import Sink
from eventsinkd.events import Event
from eventsinkd.metrics import Metrics
from eventsinkd.transports.contract import Attempt, Outcome

OUTCOMES = [
    Attempt(Outcome.DELIVERED, None, "ok"),
    Attempt(Outcome.RETRY_STATUS, None, "HTTP 503"),
    Attempt(Outcome.PERMANENT, None, "HTTP 400"),
    Attempt(Outcome.CONNECTION, None, "refused"),
    Attempt(Outcome.TIMEOUT, None, "timeout"),
]

# Every 5th event filtered, every 7th one the program fails on, the rest renamed.
SHAPE = """(.payload_id | ltrimstr("p") | tonumber) as $n
| if $n % 5 == 0 then empty
  elif $n % 7 == 0 then error("no shape for \\($n)")
  else {id: .payload_id, who: .subject} end"""


class Drawn:
    """Answers each event of a request with an outcome drawn from a seeded generator."""

    def __init__(self, rng: random.Random, weights: Sequence[int], max_batch: int) -> None:
        self.rng = rng
        self.weights = weights
        self.max_batch = max_batch

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        await asyncio.sleep(self.rng.choice([0, 0, 0.001]))
        return self.rng.choices(OUTCOMES, self.weights, k=len(events))


def check(stats: SinkStats, *sinks: Sink) -> None:
    held = sum(s.inflight for s in sinks)
    assert stats.offered == (
        stats.delivered + stats.failed + stats.dropped + stats.filtered + held
    ), (
        stats,
        held,
    )


Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(1, 30)),
        st.tuples(st.just("wait"), st.integers(0, 20)),
        st.tuples(st.just("reload"), st.integers(0, 0)),
    ),
    min_size=1,
    max_size=12,
)


async def scenario(
    seed: int, weights: list[int], plan: list[Step], block: bool, sink_opts: dict[str, object]
) -> None:
    rng = random.Random(seed)
    cfg = events_cfg(
        {"name": "s", "type": "otlp", "url": "http://127.0.0.1:9", **sink_opts},
        max_inflight=20,
        retry_backoff_seconds=[0.001, 0.002],
        pause_after_failures=3,
    )
    metrics = Metrics()

    def make(old: Sink | None) -> Sink:
        sink = Sink(
            cfg.sinks[0],
            cfg,
            metrics,
            stats=old.stats if old is not None else None,
            predecessor=old,
            rng=random.Random(seed),
        )
        sink.transport = Drawn(rng, weights, sink.transport.max_batch)
        return sink

    sink = make(None)
    await sink.start()
    stats = sink.stats
    retiring: list[asyncio.Task[int]] = []
    old_sinks: list[Sink] = []
    n = 0
    for what, count in plan:
        check(stats, sink, *old_sinks)
        if what == "offer":
            for _ in range(count):
                event = Event("memory_written", entry(n, subject=f"user:{n % 3}"), ("summary",))
                n += 1
                if block:
                    if not sink.put_nowait(event, f"user:{n % 3}"):
                        break  # block mode would wait here (the WAL holds the rest)
                else:
                    sink.offer(event, f"user:{n % 3}")
                check(stats, sink, *old_sinks)
        elif what == "wait":
            await asyncio.sleep(count / 1000)
        else:
            new = make(sink)
            await new.start()
            old_sinks.append(sink)
            retiring.append(asyncio.ensure_future(sink.stop(0.05, successor=new)))
            sink = new
        check(stats, sink, *old_sinks)
    left = await sink.stop(0.05)
    assert sum(await asyncio.gather(*retiring)) == 0  # a reload hands everything over
    check(stats, sink, *old_sinks)
    assert sink.inflight == 0 and all(s.inflight == 0 for s in old_sinks)
    assert stats.offered == stats.delivered + stats.failed + stats.dropped + stats.filtered
    if "transform" in sink_opts and n >= 5:
        assert stats.filtered > 0  # the program's empty was reached
    assert left <= stats.dropped


@settings(
    max_examples=int(os.environ.get("ACCOUNTING_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    weights=st.lists(st.integers(0, 5), min_size=5, max_size=5).filter(any),
    plan=steps,
    block=st.booleans(),
    options=st.sampled_from(
        [
            {},
            {"max_batch": 5},
            {"concurrency": 1},
            {"order": "subject"},
            {"order": "subject", "max_batch": 4},
            {"max_retries": 0},
            {"transform": SHAPE},
            {"transform": SHAPE, "order": "subject", "max_batch": 4},
        ]
    ),
)
def test_offered_is_delivered_failed_dropped_or_held_at_every_step(
    seed: int, weights: list[int], plan: list[Step], block: bool, options: dict[str, object]
) -> None:
    asyncio.run(scenario(seed, weights, plan, block, options))
