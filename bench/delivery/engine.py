"""The engine measured alone: one sink, synthetic events, timed until ``wait_idle()``."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import msgspec
import orjson

from bench.common import Capacity, Receiver, receiver_doc
from eventsinkd.config.model import EventsConfig
from eventsinkd.delivery.engine import Engine
from eventsinkd.metrics import Metrics
from eventsinkd.state.positions import Checkpointer
from eventsinkd.wal.batches import Batch, Record
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.position import Position

BATCH_RECORDS = 500
MAX_EVENTS = 100_000  # max_inflight of the sink; N never exceeds it, so nothing is dropped
MIN_EVENTS = 50
RUN_TIMEOUT_S = 60.0  # one run never waits longer than this for wait_idle()
WAL_FILE = "wal-1.jsonl"
T = TypeVar("T")


def _record(entry: Entry, line: int) -> Record:
    """A Record of WAL_FILE (``Record(entry, segment, line)``, or the older
    ``Record(entry, position)``)."""
    if "segment" in getattr(Record, "_fields", ()):
        return Record(entry, WAL_FILE, line)
    return cast(Any, Record)(entry, Position(WAL_FILE, line))  # type: ignore[no-any-return]


def make_batches(n: int, run_id: int) -> list[Batch]:
    """N synthetic data entries (as tests/delivery/test_delivery.py builds them), in batches."""
    batches: list[Batch] = []
    recs: list[Record] = []
    for i in range(n):
        entry = Entry(
            payload_id=f"r{run_id}-p{i:07d}",
            idempotency_key=f"idem-{run_id}-{i}",
            status="PENDING",
            timestamp="2026-04-10T12:34:56.1234567Z",
            source="claude-desktop",
            destination="sqlite",
            subject="user:alice",
            actor_type="user",
            actor_id="alice",
            raw_payload=msgspec.Raw(orjson.dumps({"content": f"memory <{i}> & more"})),
            entry_type="",
            monotonic_seq=i,
        )
        recs.append(_record(entry, i + 1))
        if len(recs) == BATCH_RECORDS or i == n - 1:
            batches.append(Batch(recs, Position(WAL_FILE, i + 1)))
            recs = []
    return batches


@dataclass(slots=True)
class Sample:
    events: int
    wall_s: float
    cpu_s: float  # this process (the engine)
    receiver_cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(slots=True)
class Cell:
    latency_ms: int
    concurrency: int
    events: int = 0
    samples: list[Sample] = field(default_factory=list)
    client: Capacity | None = None  # the bare aiohttp client (load generator), same connections

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def cpu_ms_per_1000(self) -> float:
        return statistics.median(s.cpu_s / s.events * 1e6 for s in self.samples)

    @property
    def receiver_cpu_ms_per_1000(self) -> float:
        return statistics.median(s.receiver_cpu_s / s.events * 1e6 for s in self.samples)

    @property
    def wall_s(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)


def events_config(url: str, concurrency: int) -> EventsConfig:
    return EventsConfig.model_validate(
        {
            "max_inflight": MAX_EVENTS,
            "overflow": "drop",
            "sinks": [{"name": "bench", "url": url, "concurrency": concurrency}],
        }
    )


async def _receiver_stats(port: int) -> tuple[int, float]:
    """(POSTs answered, receiver CPU seconds), off the event loop."""
    doc = await asyncio.to_thread(receiver_doc, port)
    return int(doc["requests"]), float(doc["cpu_s"])


async def deliver(url: str, port: int, concurrency: int, batches: list[Batch]) -> Sample:
    """One run: a fresh Engine, the batches handed to its sink's cursor (no WAL, no saved
    position), timed until wait_idle()."""
    n = sum(len(b.records) for b in batches)
    engine = Engine(events_config(url, concurrency), Metrics(), lambda _sink: Checkpointer(None))
    cursor = engine.cursors["bench"]
    await engine.start()
    try:
        got_before, rcpu_before = await _receiver_stats(port)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for batch in batches:
            await cursor.handle(batch)
        await asyncio.wait_for(engine.wait_idle(), RUN_TIMEOUT_S)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        got_after, rcpu_after = await _receiver_stats(port)
    finally:
        left = await engine.stop(5)
    stats = engine.sinks["bench"].stats
    if stats.delivered != n or stats.dropped or stats.failed or left:
        raise RuntimeError(
            f"delivered {stats.delivered} of {n} (dropped {stats.dropped}, "
            f"failed {stats.failed}, left {left})"
        )
    if got_after - got_before != n:
        raise RuntimeError(f"the receiver answered {got_after - got_before} requests, not {n}")
    return Sample(n, wall, cpu, rcpu_after - rcpu_before)


async def calibrate(url: str, port: int, concurrency: int, target_s: float) -> int:
    """Warm up (imports, first connections) and pick N so a run takes about ``target_s``."""
    n = max(20, 4 * concurrency)
    spent = 0.0
    rate = 0.0
    for _ in range(12):  # doubling warm-ups; bounded
        sample = await deliver(url, port, concurrency, make_batches(n, -1))
        spent += sample.wall_s
        rate = sample.rate
        if sample.wall_s >= min(0.4, target_s / 4) or spent >= target_s / 2:
            break
        n = min(MAX_EVENTS, n * 2)
    return max(MIN_EVENTS, min(MAX_EVENTS, round(rate * target_s / 10) * 10))


async def measure_cell(
    rcv: Receiver, concurrency: int, runs: int, target_s: float, events: int | None
) -> Cell:
    cell = Cell(int(rcv.latency_ms), concurrency)
    if events:  # a fixed N: still warm up (imports, first connections) once
        await deliver(rcv.url, rcv.port, concurrency, make_batches(min(events, 200), -1))
    cell.events = events or await calibrate(rcv.url, rcv.port, concurrency, target_s)
    for run_id in range(runs):
        batches = make_batches(cell.events, run_id)
        cell.samples.append(await deliver(rcv.url, rcv.port, concurrency, batches))
    return cell


# -- the event loop --------------------------------------------------------------------


def resolve_loop(use_asyncio: bool = False) -> str:
    """The loop the engine runs on: uvloop like ``eventsinkd run``, unless asked for asyncio's
    own loop or uvloop is not installed (the daemon then falls back to asyncio's loop too)."""
    if use_asyncio:
        return "asyncio"
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_on(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on ``loop`` ("uvloop" or "asyncio"), without touching the global
    event loop policy (the other benchmarks in the same process keep asyncio's loop)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
