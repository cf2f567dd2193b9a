"""Fault suite: kill -9 at random moments, and reload storms, against the real daemon."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, accounting, metric_value, settle, until

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter, run_workload
from eventsinkd.wal.position import Position


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


def steady_writes(wal: Path, rate_per_s: float) -> asyncio.Future[NexusWriter]:
    """3,000 entries from a Nexus-like writer in a thread: rotation and rewrites included."""
    return asyncio.ensure_future(
        asyncio.to_thread(
            run_workload,
            wal,
            3000,
            batch=15,
            rewrite_every=300,
            rate_per_s=rate_per_s,
            max_segment_bytes=128 * 1024,
        )
    )


@pytest.mark.parametrize("overflow", ["block", "drop"])
async def test_kill_9_during_a_steady_stream(
    tmp_path: Path, receiver: WebhookServer, overflow: str
) -> None:
    rng = random.Random(overflow)
    d = Daemon(tmp_path, [{"name": "s", "url": receiver.url}], overflow=overflow)
    writing = steady_writes(d.wal, rate_per_s=400)
    await d.start()
    runs: list[tuple[int, Position | None]] = []  # (first request index, position resumed from)
    runs.append((0, None))
    for _ in range(5):
        await asyncio.sleep(rng.uniform(0.4, 1.2))
        assert d.proc is not None
        d.proc.kill()
        await d.proc.wait()
        # Every request the killed process had sent is counted before the restart's.
        await until(lambda: receiver.open_connections == 0)
        saved = d.saved_cursor("s")
        runs.append((len(receiver.requests), saved))
        await d.start()
    writer: NexusWriter = await writing
    await settle(d, timeout_s=120)
    assert await d.stop() == 0

    where = {
        f"memory_written:{w.payload_id}": (w.segment, w.line + 1) for w in writer.expected_data()
    }
    expected = set(where)
    arrivals = receiver.ids
    bounds = [start for start, _ in runs] + [len(arrivals)]
    seen: set[str] = set()
    duplicates = 0
    for k, (start, resumed_from) in enumerate(runs):
        for wid in arrivals[start : bounds[k + 1]]:
            assert wid in expected
            again = wid in seen
            duplicates += again
            if resumed_from is not None:
                # Nothing at or before the saved position is sent again after a restart...
                assert not (again and where[wid] <= resumed_from.key()), (wid, resumed_from)
                if overflow == "drop":
                    # ...and in drop mode nothing before it at all.
                    assert where[wid] > resumed_from.key(), (wid, resumed_from)
            seen.add(wid)
    lost = len(expected - seen)
    print(
        f"\nkill -9 x5, overflow={overflow}: {len(expected)} written, {len(seen)} received, "
        f"{duplicates} duplicates, {lost} lost"
    )
    if overflow == "block":
        assert lost == 0


async def test_reload_storm_loses_nothing_in_block_mode(
    tmp_path: Path, receiver: WebhookServer
) -> None:
    d = Daemon(tmp_path, [{"name": "s", "url": receiver.url}], overflow="block")
    await d.start()
    writing = steady_writes(d.wal, rate_per_s=600)
    try:
        for i in range(50):
            if i % 2 == 0:
                # Valid, and each time a different sink configuration (so sinks are replaced).
                d.write_config(
                    [{"name": "s", "url": receiver.url, "concurrency": 1 + i % 7}], overflow="block"
                )
            else:
                d.config.write_text(f"wal: {{dir: {d.wal}}}\nevents: {{sinks: [{{name: s}}]}}\n")
            d.signal(signal.SIGHUP)
            await asyncio.sleep(0.08)
        writer: NexusWriter = await writing
        want = {f"memory_written:{w.payload_id}" for w in writer.expected_data()}
        await until(lambda: set(receiver.ids) >= want, timeout_s=90)
        await settle(d)
        metrics = await d.get("/metrics")
        ok = metric_value(metrics, "eventsinkd_config_reloads_total", result="success")
        failed = metric_value(metrics, "eventsinkd_config_reloads_total", result="failure")
        # SIGHUPs that arrive while a reload runs are coalesced into the next one.
        assert 2 <= ok + failed <= 50 and ok >= 1 and failed >= 1
        delivered, fail, dropped = await accounting(d, "s")
        assert (fail, dropped) == (0, 0)
        assert delivered >= len(want)
    finally:
        assert await d.stop() == 0
