"""Status events end to end: the daemon under a Nexus-like writer that marks entries (with a
kill -9), ``eventsinkd tail --types``, ``verify``'s counts and the config that opts in."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURE_SETS, FIXTURES, fixture_mac_key, mac_key_args
from daemon_harness import SECRET, Daemon, accounting, run_cli, settle, until, until_status
from standardwebhooks.webhooks import Webhook
from test_statuses import expected_changes, final_statuses, writer_statuses

from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.state.positions import PositionStore, cursor_file
from eventsinkd.wal.position import Position

ALL_TYPES = ["memory_written", "memory_persisted", "memory_write_failed"]
STATUS_KINDS = ("memory_persisted", "memory_write_failed")


async def nexus_like(w: NexusWriter, batches: int, rng: random.Random) -> None:
    """Appends with Nexus-like marking: recent entries marked as they are stored (a batch
    spanning a rotation rewrites two segments), the odd older segment marked late (Nexus
    catching up after a restart), some entries given up on."""
    for i in range(batches):
        await asyncio.to_thread(w.append, rng.randint(3, 12))
        if i % 4 == 3:
            await asyncio.to_thread(w.rewrite_recent, fraction=0.6, failed=0.1)
        if i % 9 == 8:
            older = [s for s in w.segments[:-2] if w.line_count(s)]
            if older:
                await asyncio.to_thread(w.rewrite, rng.choice(older), fraction=0.5)
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("overflow", ["block", "drop"])
async def test_every_final_status_arrives_once_through_marks_rotations_and_a_kill_9(
    new_daemon: Callable[..., Daemon], receiver: WebhookServer, overflow: str
) -> None:
    rng = random.Random(overflow)
    d = new_daemon(
        [{"name": "s", "url": receiver.url, "secret": SECRET}],
        overflow=overflow,
        types=ALL_TYPES,
        max_inflight=100_000,  # drop mode: no drop, so every event can be counted
    )
    w = NexusWriter(d.wal, max_segment_bytes=12 * 1024, seed=7)
    await d.start()
    await nexus_like(w, 40, rng)
    assert d.proc is not None
    d.proc.kill()
    await d.proc.wait()
    await nexus_like(w, 10, rng)  # marked while nobody reads
    await d.start()
    marked_before = set(w.marks)
    await nexus_like(w, 40, rng)
    for name in w.segments:  # Nexus catches up with everything it holds...
        if w.line_count(name):
            await asyncio.to_thread(w.rewrite, name, fraction=1.0, failed=0.05)
    await asyncio.to_thread(w.append, 5)  # ...and these stay PENDING
    statuses = writer_statuses(w)
    want = expected_changes(statuses)
    wanted_ids = {f"{kind}:{pid}" for pid, kind in want.items()}
    await until(lambda: wanted_ids <= set(receiver.ids), timeout_s=60)
    doc = await until_status(
        d,
        lambda s: s["sinks"]["s"].get("status_events", {}).get("pending") == 5,
        what="the 5 entries still PENDING followed",
    )
    await settle(d)
    delivered, failures, dropped = await accounting(d, "s")
    assert await d.stop() == 0
    assert doc["event_types"] == ALL_TYPES
    assert (failures, dropped) == (0, 0)

    counts = Counter(receiver.ids)
    status_ids = {i for i in counts if i.partition(":")[0] in STATUS_KINDS}
    assert status_ids == wanted_ids, "spurious status events"
    written = {f"memory_written:{x.payload_id}" for x in w.expected_data()}
    assert set(counts) == written | wanted_ids
    # Each at most once, but for a duplicate across the kill (an entry marked after the
    # restart had no chance of one).
    assert max(counts.values()) <= 2
    for pid, kind in want.items():
        x = next(x for x in w.expected_data() if x.payload_id == pid)
        if (x.segment, x.line) not in marked_before:
            assert counts[f"{kind}:{pid}"] == 1, pid
    failed = {pid for pid, s in statuses.items() if s == "PERMANENT_FAILURE"}
    assert failed and {
        i.partition(":")[2] for i in status_ids if i.startswith("memory_write_f")
    } == (failed)
    hook = Webhook(SECRET)
    for req in receiver.requests:
        body = json.loads(req.body)
        hook.verify(req.body, req.headers)
        kind, _, pid = req.headers["webhook-id"].partition(":")
        assert (body["event_type"], body["payload_id"]) == (kind, pid)
        if kind in STATUS_KINDS:
            assert body["status"] == statuses[pid]
        else:
            assert "status" not in body
    print(
        f"\nstatus events, overflow={overflow}: {len(written)} written, {len(want)} marked "
        f"final, {sum(counts[i] for i in status_ids)} status requests, "
        f"{sum(n - 1 for n in counts.values())} duplicates across the kill; "
        f"{delivered} delivered by the last run"
    )


async def test_drop_mode_counts_a_status_event_it_has_no_room_for(
    new_daemon: Callable[..., Daemon], receiver: WebhookServer
) -> None:
    gate = asyncio.Event()

    async def held(_n: int, _req: object) -> object:
        await gate.wait()
        from aiohttp import web

        return web.Response(status=204)

    receiver.behaviour = held
    d = new_daemon(
        [{"name": "s", "url": receiver.url, "concurrency": 1}],
        types=["memory_persisted"],
        max_inflight=2,
    )
    w = NexusWriter(d.wal, seed=8)
    w.append(10)
    await d.start()
    await until_status(d, lambda s: s["sinks"]["s"]["status_events"]["pending"] == 10)
    w.rewrite(fraction=1.0)
    # One rewrite of the segment being read: ten status events at once, room for two.
    await until_status(d, lambda s: s["sinks"]["s"]["dropped"] == 8, what="8 drops")
    gate.set()
    await settle(d)
    delivered, failed, dropped = await accounting(d, "s")
    assert (delivered, failed, dropped) == (2, 0, 8)
    assert all(i.startswith("memory_persisted:") for i in receiver.ids)
    assert (await until_status(d, lambda s: True))["sinks"]["s"]["status_events"]["pending"] == 0
    assert await d.stop() == 0


# -- tail and verify ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_tail_types_and_verify_agree_with_the_files(name: str) -> None:
    d = FIXTURES / name
    types = ",".join(ALL_TYPES)
    key = mac_key_args(name)
    res = run_cli("tail", d / "wal", "--from", "beginning", "--no-follow", "--types", types, *key)
    assert res.returncode == 0, res.stderr
    bodies = [json.loads(line) for line in res.stdout.splitlines()]
    statuses = final_statuses(d / "wal", fixture_mac_key(name))
    got = {b["payload_id"]: b["event_type"] for b in bodies if b["event_type"] in STATUS_KINDS}
    assert got == expected_changes(statuses)
    assert all(b["status"] == statuses[b["payload_id"]] for b in bodies if "status" in b)
    by_type = Counter(b["event_type"] for b in bodies)

    report = run_cli("verify", d / "wal", *key).stdout
    line = next(ln for ln in report.splitlines() if ln.startswith("status events: "))
    counted = dict(p.split("=") for p in line.removeprefix("status events: ").split(", "))
    assert {k: int(v) for k, v in counted.items()} == {k: by_type[k] for k in STATUS_KINDS}
    assert f"memory_written events: {by_type['memory_written']} (" in report


def test_tail_follows_pending_entries_across_runs_with_a_state_dir(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=4 * 1024, seed=9)
    w.append(20)
    args = ["tail", w.wal_dir, "--from", "beginning", "--no-follow", "--state-dir", tmp_path / "st"]
    first = run_cli(*args, "--types", "memory_written,memory_persisted")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 20  # all PENDING: memory_written only
    for name in w.segments:
        if w.line_count(name):
            w.rewrite(name, fraction=0.5)
    second = run_cli(*args, "--types", "memory_persisted")
    bodies = [json.loads(line) for line in second.stdout.splitlines()]
    marked = {pid for pid, s in writer_statuses(w).items() if s == "DELIVERED"}
    assert {b["payload_id"] for b in bodies} == marked and len(bodies) == len(marked)
    assert {b["event_type"] for b in bodies} == {"memory_persisted"}
    assert run_cli(*args, "--types", "memory_persisted").stdout == ""  # each once


def test_tail_refuses_an_unknown_type(tmp_path: Path) -> None:
    res = run_cli("tail", tmp_path, "--types", "memory_written,memory_stored")
    assert res.returncode == 2
    assert "unknown event type memory_stored" in res.stderr


def test_config_refuses_a_filter_on_a_type_not_produced(tmp_path: Path) -> None:
    text = (
        "wal: {dir: /w}\n"
        "events:\n"
        "  sinks:\n"
        "    - name: a\n"
        "      url: http://127.0.0.1:1/\n"
        "      filter: {event_types: [memory_persisted]}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, Path("c.yaml"))
    assert err.value.problems == [
        "events.sinks[0].filter.event_types (line 6): events.types (memory_written) does not "
        "produce memory_persisted: add it there, or drop it here"
    ]
    ok = parse_config(text.replace("events:\n", "events:\n  types: [memory_persisted]\n"), Path())
    assert ok.events.status_types == {"memory_persisted"}
    for bad, problem in (
        ("[]", "must list at least one event type"),
        ("[memory_written, memory_written]", "lists an event type twice"),
        ("[memory_stored]", "must be 'memory_written'"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(f"wal: {{dir: /w}}\nevents: {{types: {bad}}}\n", Path("c.yaml"))
        assert problem in err.value.problems[0]
        assert err.value.problems[0].startswith("events.types")


def test_a_rewind_while_stopped_keeps_the_pending_entries(
    new_daemon: Callable[..., Daemon],
) -> None:
    d = new_daemon([{"name": "s", "url": "http://127.0.0.1:9/hook"}], types=ALL_TYPES)
    NexusWriter(d.wal).append(5)
    store = PositionStore(d.root / "state", d.wal, cursor_file("s"))
    pending = {"version": 1, "segments": {"wal-1.jsonl": [None, [[1, 3]]]}}
    assert store.save(Position("wal-1.jsonl", 3), pending)
    res = run_cli("rewind", "-c", d.config, "--sink", "s", "--to", "beginning")
    assert res.returncode == 0, res.stdout + res.stderr
    again = PositionStore(d.root / "state", d.wal, cursor_file("s"))
    assert again.load() == Position("", 0)
    assert again.statuses == pending
