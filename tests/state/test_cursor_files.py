"""A sink never moves past an event it has not finished without an operator's word (issue 21).

Against a real `eventsinkd run` subprocess, real receivers on 127.0.0.1 and the
`rewind` command as a real subprocess:

* a damaged cursor file falls back to its previous copy (``<sink>.json.prev``):
  the backlog written while the daemon was stopped still arrives, and /status
  shows the problem until a save replaces the file;
* no usable cursor at all (every copy damaged, a newer format, a segment after
  every one in the WAL, a damaged ``position.json`` before the upgrade): block
  mode does not start (exit 3) and names the file and the command; drop mode
  starts at ``start_at`` and says so; ``rewind`` with the daemon stopped chooses
  the position and the daemon then starts;
* ``rewind`` forward past undelivered events is refused with their number, and
  with ``--forward`` skips exactly that many.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from daemon_harness import (
    Daemon,
    eventsinkd,
    received_all,
    reload,
    run_cli,
    settle,
    until,
    until_status,
    wait_cursor_at_end,
    webhook_ids,
)
from test_rewind import in_utc_plus_2

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.wal.position import Position

EXIT_STARTUP = 3
FUTURE_SEGMENT = "wal-9999999999999999999.jsonl"  # sorts after every segment the writer makes

DAMAGE: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\x00\xffnot a cursor at all",
    "truncated": b'{"version":1,"segment":"wal-1',
    "version 2": b'{"version":2,"segment":"wal-1.jsonl","line":3}',
    "negative line": b'{"version":1,"segment":"wal-1.jsonl","line":-5}',
    "segment after the WAL": (b'{"version":1,"segment":"wal-9999999999999999999.jsonl","line":3}'),
}


def sink(url: str, **kw: Any) -> dict[str, Any]:
    # start_at end (the default of wal.start_at; the harness sets beginning): what turned
    # a damaged cursor into skipping the whole backlog.
    return {"name": "s", "url": url, "start_at": "end", **kw}


def prev_path(d: Daemon) -> Path:
    return d.cursor_path("s").with_name("s.json.prev")


def cursor_doc(segment: str, line: int, version: int = 1) -> bytes:
    return json.dumps({"version": version, "segment": segment, "line": line}).encode()


async def delivered_and_stopped(d: Daemon, receiver: WebhookServer, w: NexusWriter) -> None:
    """Start ``d``, let it deliver two rounds of writes (so the cursor is saved more than
    once and has a previous copy), stop it."""
    await d.start()
    for _ in range(2):
        await asyncio.to_thread(w.append, 10)
        await received_all(receiver, set(webhook_ids(w)))
        await wait_cursor_at_end(d, w)
    assert await d.stop() == 0
    assert prev_path(d).exists(), "no previous copy after several saves"


class Flaky:
    """A receiver's answer: 503 while ``failing``, else 204; the webhook-ids answered 204."""

    def __init__(self) -> None:
        self.failing = True
        self.delivered: list[str] = []

    async def __call__(self, _n: int, req: web.Request) -> web.StreamResponse:
        if self.failing:
            return web.Response(status=503)
        self.delivered.append(req.headers["webhook-id"])
        return web.Response(status=204)

    async def got_all(self, want: set[str], timeout_s: float = 60) -> None:
        await until(lambda: want <= set(self.delivered), timeout_s)


def log_text(d: Daemon) -> str:
    return d.log.read_text(errors="replace")


# -- 1. a damaged cursor file: the previous copy, and the backlog arrives ---------------------


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_damaged_cursor_resumes_from_its_previous_copy_and_the_backlog_arrives(
    new_daemon: Callable[..., Daemon], damage: str
) -> None:
    flaky = Flaky()
    receiver = await WebhookServer(flaky).start()
    try:
        d = new_daemon([sink(receiver.url)], overflow="block")
        w = NexusWriter(d.wal)
        flaky.failing = False
        await delivered_and_stopped(d, receiver, w)

        await asyncio.to_thread(w.append, 40)  # the backlog, written while stopped
        d.cursor_path("s").write_bytes(DAMAGE[damage])
        flaky.failing = True  # the cursor cannot move: the problem must stay in /status
        await d.start()
        doc = await until_status(
            d, lambda st: any("previous copy" in p for p in st["problems"]), what="problem"
        )
        problem = next(p for p in doc["problems"] if "previous copy" in p)
        assert str(d.cursor_path("s")) in problem and "sink s" in problem, problem
        assert "resuming from the previous copy" in log_text(d)

        flaky.failing = False
        await flaky.got_all(set(webhook_ids(w)))
        await wait_cursor_at_end(d, w)
        # The good save that replaced the damaged file ends the problem.
        await until_status(d, lambda st: st["problems"] == [], what="problem gone")
        assert "saved whole again" in log_text(d)
        assert await d.stop() == 0
    finally:
        await receiver.stop()


# -- 2. no usable cursor: block mode does not start; rewind chooses; drop mode says so ------


def damage_all(d: Daemon, w: NexusWriter, how: str) -> tuple[Path, str]:
    """Damage every copy of sink s's cursor (or the old position.json); the file named."""
    cur, prev = d.cursor_path("s"), prev_path(d)
    if how == "every copy damaged":
        cur.write_bytes(DAMAGE["garbage"])
        prev.write_bytes(DAMAGE["truncated"])
        return cur, "is corrupt"
    if how == "newer format":  # a rollback after a newer eventsinkd saved both
        cur.write_bytes(cursor_doc(w.active_segment, 1, version=2))
        prev.write_bytes(cursor_doc(w.active_segment, 1, version=2))
        return cur, "unknown format version 2"
    if how == "segment after the WAL":
        cur.write_bytes(cursor_doc(FUTURE_SEGMENT, 4))
        prev.unlink()
        return cur, f"names segment {FUTURE_SEGMENT}, which is not in the WAL"
    assert how == "damaged position.json"  # before the upgrade to one cursor per sink
    cur.unlink()
    prev.unlink()
    legacy = d.root / "state" / "position.json"
    legacy.write_bytes(DAMAGE["truncated"])
    return legacy, "is corrupt"


HOW = ["every copy damaged", "newer format", "segment after the WAL", "damaged position.json"]


@pytest.mark.parametrize("how", HOW)
async def test_block_mode_without_a_usable_cursor_refuses_to_start_until_rewind_chooses(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon], how: str
) -> None:
    d = new_daemon([sink(receiver.url)], overflow="block")
    w = NexusWriter(d.wal)
    await delivered_and_stopped(d, receiver, w)
    first = len(webhook_ids(w))
    await asyncio.to_thread(w.append, 30)
    path, why = damage_all(d, w, how)

    await d.start(wait=False)
    assert d.proc is not None
    assert await asyncio.wait_for(d.proc.wait(), 60) == EXIT_STARTUP, log_text(d)
    log = log_text(d)
    assert str(path) in log and why in log, log
    assert f"eventsinkd rewind -c {d.config} --sink s --to beginning|TIME|PAYLOAD_ID" in log
    assert len(receiver.ids) == first  # nothing was sent

    # The operator's word, with the daemon stopped and the file still damaged.
    k = first + 7
    to = w.expected_data()[k].payload_id
    res = await eventsinkd("rewind", "-c", d.config, "--sink", "s", "--to", to)
    assert res.returncode == 0, res.stdout + res.stderr
    unknown = "the end of the WAL (no saved cursor)" if "position" in how else "an unusable cursor"
    assert f"cursor moved from {unknown} to " in res.stdout and "segment wal-" in res.stdout, (
        res.stdout
    )
    await d.start()
    ids = webhook_ids(w)
    await received_all(receiver, set(ids[k:]))
    await settle(d)
    assert Counter(receiver.ids[first:]) == Counter(ids[k:])
    assert (await until_status(d, lambda st: True))["problems"] == []
    assert await d.stop() == 0


async def test_drop_mode_without_a_usable_cursor_starts_at_start_at_and_says_so(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    d = new_daemon([sink(receiver.url)], overflow="drop")
    w = NexusWriter(d.wal)
    await delivered_and_stopped(d, receiver, w)
    before = set(webhook_ids(w))
    await asyncio.to_thread(w.append, 30)  # skipped: drop mode, start_at end
    damage_all(d, w, "every copy damaged")

    await d.start()
    doc = await until_status(d, lambda st: st["problems"] != [], what="a problem")
    (problem,) = doc["problems"]
    assert "sink s: no usable cursor" in problem and str(d.cursor_path("s")) in problem
    assert "started at the end of the WAL" in problem, problem
    assert "(drop mode)" in log_text(d)

    new = {f"memory_written:{x.payload_id}" for x in await asyncio.to_thread(w.append, 10)}
    await received_all(receiver, new)
    await until_status(d, lambda st: st["problems"] == [], what="problem gone after a save")
    await wait_cursor_at_end(d, w)
    assert set(receiver.ids) == before | new  # the 30 written while stopped: skipped
    assert await d.stop() == 0


# -- 3. rewind forward: refused with the count, or exactly that many skipped ---------------


@pytest.mark.parametrize("target", ["payload_id", "time"])
async def test_rewind_forward_is_refused_and_with_forward_skips_exactly_what_it_said(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon], target: str
) -> None:
    d = new_daemon([sink(receiver.url)], overflow="block")
    w = NexusWriter(d.wal, max_segment_bytes=8 * 1024)  # the backlog spans segments
    await delivered_and_stopped(d, receiver, w)
    first = len(webhook_ids(w))
    skip = 60
    await asyncio.to_thread(w.append, skip)  # the backlog, written while stopped...
    boundary = float(int(time.time() + 0.001) + 1)
    await until(lambda: time.time() >= boundary)  # (a time between the two parts)
    await asyncio.to_thread(w.append, 40)
    data = w.expected_data()
    to = (
        data[first + skip].payload_id
        if target == "payload_id"
        else in_utc_plus_2(data[first + skip].timestamp)
    )
    before = d.cursor_path("s").read_bytes()

    res = await eventsinkd("rewind", "-c", d.config, "--sink", "s", "--to", to)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"would skip {skip} event(s) it has not delivered" in res.stderr, res.stderr
    assert "--forward" in res.stderr and ":0" not in res.stderr
    assert d.cursor_path("s").read_bytes() == before  # nothing moved

    res = await eventsinkd("rewind", "-c", d.config, "--sink", "s", "--to", to, "--forward")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"forward: {skip} event(s) skipped" in res.stdout, res.stdout
    await d.start()
    ids = webhook_ids(w)
    await received_all(receiver, set(ids[first + skip :]))
    await settle(d)
    assert Counter(receiver.ids[first:]) == Counter(ids[first + skip :])
    assert await d.stop() == 0


async def test_rewind_forward_is_refused_by_the_running_daemon_too(
    new_daemon: Callable[..., Daemon],
) -> None:
    flaky = Flaky()
    receiver = await WebhookServer(flaky).start()
    try:
        d = new_daemon([sink(receiver.url)], overflow="block", max_inflight=20)
        w = NexusWriter(d.wal)
        await d.start()
        await asyncio.to_thread(w.append, 100)  # the sink pauses holding 20, the rest waits
        await until_status(d, lambda st: st["sinks"]["s"]["state"] == "paused", what="sink paused")
        # Where it began is saved (nothing after it is finished).
        await until(lambda: d.saved_cursor("s") is not None)
        saved = d.saved_cursor("s")
        k = 80
        to = w.expected_data()[k].payload_id
        res = await eventsinkd("rewind", "-c", d.config, "--sink", "s", "--to", to)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"would skip {k} event(s)" in res.stderr, res.stderr
        assert d.saved_cursor("s") == saved

        res = await eventsinkd("rewind", "-c", d.config, "--sink", "s", "--to", to, "--forward")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "the running daemon moved its cursor" in res.stdout, res.stdout
        assert f"{k} event(s) skipped" in res.stdout, res.stdout
        flaky.failing = False
        ids = webhook_ids(w)
        await flaky.got_all(set(ids[k:]))
        await settle(d)
        saved_after = d.saved_cursor("s")
        assert saved_after is not None and saved_after.key() >= (
            w.expected_data()[-1].segment,
            w.expected_data()[-1].line + 1,
        )
        assert await d.stop() == 0
    finally:
        await receiver.stop()


def test_position_words_not_colons() -> None:
    from eventsinkd.wal.position import describe

    assert describe(Position("", 0)) == "the beginning of the WAL"
    assert describe(Position("wal-5.jsonl", 12)) == "segment wal-5.jsonl after line 12"
    assert describe(Position("wal-5.jsonl", 0)) == "the start of segment wal-5.jsonl"


async def test_a_restart_before_any_event_is_finished_resumes_where_reading_began(
    new_daemon: Callable[..., Daemon],
) -> None:
    """With ``start_at: end``, a sink that had not finished one event had no cursor saved: a
    restart started at the new end and skipped what was written in between."""
    flaky = Flaky()
    receiver = await WebhookServer(flaky).start()
    try:
        d = new_daemon([sink(receiver.url)], overflow="block")
        w = NexusWriter(d.wal, precreate=False)  # one segment: no batch without events
        w.append(5)  # before the first start: not sent (start_at end)
        await d.start()
        await asyncio.to_thread(w.append, 30)
        await until_status(d, lambda st: st["sinks"]["s"]["state"] == "paused", what="sink paused")
        assert await d.stop() == 0
        await asyncio.to_thread(w.append, 10)  # while stopped
        flaky.failing = False
        await d.start()
        await flaky.got_all(set(webhook_ids(w)[5:]))
        await wait_cursor_at_end(d, w)
        assert not set(receiver.ids) & set(webhook_ids(w)[:5])
        assert await d.stop() == 0
    finally:
        await receiver.stop()


async def test_a_sink_added_by_reload_without_a_usable_cursor_waits_for_rewind(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    """Block mode, daemon running: a sink a reload adds is left out while its cursor cannot
    be used (a /status problem); rewind through the running daemon chooses, a reload adds it."""
    a = {"name": "a", "url": receiver.url}
    d = new_daemon([a], overflow="block")
    w = NexusWriter(d.wal)
    w.append(10)
    b_cursor = d.cursor_path("b")
    b_cursor.parent.mkdir(parents=True)
    b_cursor.write_bytes(DAMAGE["garbage"])
    b_cursor.with_name("b.json.prev").write_bytes(DAMAGE["empty"])
    await d.start()
    b = {"name": "b", "url": receiver.url, "headers": {"x-sink": "b"}}
    await reload(d, [a, b], overflow="block")
    doc = await until_status(d, lambda st: st["problems"] != [], what="b's problem")
    assert "b" not in doc["sinks"]
    (problem,) = doc["problems"]
    assert "sink b: no usable cursor" in problem and "eventsinkd rewind" in problem, problem

    res = await eventsinkd("rewind", "-c", d.config, "--sink", "b", "--to", "beginning")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "the running daemon moved its cursor" in res.stdout, res.stdout
    await until_status(d, lambda st: st["problems"] == [], what="problem gone")
    await reload(d, [a, b], overflow="block")

    def to_b() -> list[str]:
        return [r.headers["webhook-id"] for r in receiver.requests if "x-sink" in r.headers]

    await until(lambda: len(to_b()) >= 10)
    await settle(d)
    assert Counter(to_b()) == Counter(webhook_ids(w))
    assert await d.stop() == 0


def test_rewind_help_says_a_forward_move_is_refused_without_the_flag() -> None:
    res = run_cli("rewind", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "A move FORWARD past events the sink has not delivered is refused" in text, text
    assert "--forward" in text


@pytest.mark.parametrize(("sources", "every"), [([], 1), (["openclaw"], 3)])
def test_the_count_is_of_the_entries_the_sinks_filter_takes(
    tmp_path: Path, sources: list[str], every: int
) -> None:
    """What a forward rewind would skip: memory entries between the two positions that the
    sink's filter takes (the writer gives entry n the source n % 3: openclaw for n % 3 == 1),
    read with the sinks' reader across segments."""
    from eventsinkd.config.sinks import WebhookSinkConfig
    from eventsinkd.delivery.rewinds import wanted_by
    from eventsinkd.wal.lines import LineParser
    from eventsinkd.wal.seek import count_between

    w = NexusWriter(tmp_path / "wal", max_segment_bytes=8 * 1024)
    for _ in range(10):
        w.append(10)
    data = w.expected_data()
    assert len({x.segment for x in data[10:70]}) > 2
    sc = WebhookSinkConfig.model_validate(
        {"name": "s", "url": "http://127.0.0.1:9/hook", "filter": {"source": sources}}
    )

    def count(a: int, b: int) -> int:
        # Position "before entry i": its segment, and its 0-based line = lines consumed.
        start = Position(data[a].segment, data[a].line)
        end = Position(data[b].segment, data[b].line)
        return count_between(
            tmp_path / "wal", LineParser(None), start, end, wanted_by(sc, ["memory_written"])
        )

    want = len([i for i in range(10, 70) if every == 1 or i % 3 == 1])
    assert count(10, 70) == want
    assert count(70, 10) == 0  # backward: nothing skipped
    assert count(33, 34) == (1 if every == 1 or 33 % 3 == 1 else 0)
