"""The delivery engine driven in-process: batches handed to every sink's cursor, no WAL.

Acknowledged positions are recorded per sink; receivers are real
(eventsinkd/devtools/peers/webhook.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import orjson

from eventsinkd.config.model import EventsConfig
from eventsinkd.delivery.engine import Engine
from eventsinkd.metrics import Metrics
from eventsinkd.state.letterwriter import DeadLetterWriter
from eventsinkd.state.positions import Checkpointer
from eventsinkd.wal.batches import Batch, Record
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import StartAt


def entry(i: int, **kw: Any) -> Entry:
    fields: dict[str, Any] = {
        "payload_id": f"p{i:06d}",
        "idempotency_key": f"idem-{i}",
        "status": "PENDING",
        "timestamp": "2026-04-10T12:34:56.1234567Z",
        "source": "claude-desktop",
        "destination": "sqlite",
        "subject": "user:alice",
        "actor_type": "user",
        "actor_id": "alice",
        "payload": {"content": f"memory <{i}> & more"},
        "entry_type": "",
        "monotonic_seq": i,
    }
    fields.update(kw)
    fields["raw_payload"] = msgspec.Raw(orjson.dumps(fields.pop("payload")))  # as the line has it
    return Entry(**fields)


def batch(start: int, n: int, **kw: Any) -> Batch:
    recs = [Record(entry(i, **kw), "wal-1.jsonl", i + 1) for i in range(start, start + n)]
    return Batch(recs, Position("wal-1.jsonl", start + n))


def events_cfg(*sinks: dict[str, Any], **kw: Any) -> EventsConfig:
    base: dict[str, Any] = {"retry_backoff_seconds": [0.05]}
    base.update(kw)
    return EventsConfig.model_validate({**base, "sinks": list(sinks)})


class Recorder(Checkpointer):
    """A checkpointer with no file that records every position acknowledged to it."""

    def __init__(self, on_ack: Callable[[Position], None]) -> None:
        super().__init__(None)
        self.on_ack = on_ack

    def ack(self, pos: Position) -> None:
        super().ack(pos)
        self.on_ack(pos)


class Harness:
    """The engine's sinks fed batches directly (no WAL); acknowledged positions recorded."""

    def __init__(
        self,
        cfg: EventsConfig,
        check: Callable[[str, Position], None] | None = None,
        dead_letters: DeadLetterWriter | None = None,
        start: StartAt = "end",
    ) -> None:
        self.metrics = Metrics()
        self.acks: dict[str, list[Position]] = {s.name: [] for s in cfg.sinks}

        def recorder(name: str) -> Checkpointer:
            def on_ack(pos: Position) -> None:
                if check is not None:
                    check(name, pos)
                self.acks[name].append(pos)

            return Recorder(on_ack)

        self.engine = Engine(
            cfg, self.metrics, recorder, start_for=lambda _sink: start, dead_letters=dead_letters
        )

    async def handle(self, b: Batch) -> None:
        # Each cursor reads its own batches (and block mode empties them as it goes).
        for cursor in self.engine.cursors.values():
            await cursor.handle(Batch(list(b.records), b.end))

    def counter(self, name: str, sink: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"sink": sink})
        return value or 0.0

    def accounting(self, sink: str) -> tuple[int, int, int, int]:
        s = self.engine.sinks[sink].stats
        return s.offered, s.delivered, s.failed, s.dropped


async def run(cfg: EventsConfig, *batches: Batch, stop_timeout_s: float = 10) -> Harness:
    h = Harness(cfg)
    await h.engine.start()
    for b in batches:
        await h.handle(b)
    await asyncio.wait_for(h.engine.wait_idle(), 60)
    await h.engine.stop(stop_timeout_s)
    return h


@asynccontextmanager
async def started(cfg: EventsConfig, *, stop_timeout_s: float = 1.0) -> AsyncIterator[Harness]:
    """A started Harness for ``cfg``, stopped (with ``stop_timeout_s`` to drain) on the way out."""
    h = Harness(cfg)
    await h.engine.start()
    try:
        yield h
    finally:
        await h.engine.stop(stop_timeout_s)
