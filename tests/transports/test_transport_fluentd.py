"""``type: fluentd``: Forward protocol v1 with acks, against a spec-following receiver.

No Fluentd or Fluent Bit package exists for this machine, so the collector is
eventsinkd/devtools/peers/fluentd.py, a receiver written from the Forward protocol v1 spec (stream
unpacker, Message/Forward/PackedForward/CompressedPackedForward, ``chunk`` -> ``ack``),
on 127.0.0.1. The transport tests drive it in-process; the daemon tests run `eventsinkd run`
as a real subprocess reading a WAL written by NexusWriter.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import ssl
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import orjson
import pytest
from daemon_harness import (
    Daemon,
    eventsinkd,
    metric_value,
    settle,
    sink_status,
    until,
    until_status,
)

from eventsinkd.config.sinks import FluentdSinkConfig
from eventsinkd.devtools.peers.fluentd import (
    OTHER_CHUNK,
    EventTime,
    FluentdPeer,
    SpecError,
    ext_hook,
    parse,
    time_ns,
)
from eventsinkd.devtools.sim.nexus_writer import NexusWriter, Written
from eventsinkd.events import Event, go_json
from eventsinkd.transports import make_transport
from eventsinkd.transports.contract import Attempt, Outcome
from eventsinkd.transports.fluentd import FluentdTransport, encode_message, new_chunk_id
from eventsinkd.wal.gotime import parse_go_time_ns

TS = "2026-04-10T12:34:56.123456789Z"


def event(i: int, timestamp: str = TS, **extra: Any) -> Event:
    """An event as a dead letter rebuilds it: its webhook body exactly."""
    body = {
        "event_type": "memory_written",
        "payload_id": f"p{i}",
        "source": "claude-desktop",
        "subject": "user:<alice & bob>",  # Go escapes these in the JSON body
        "destination": "sqlite",
        "timestamp": timestamp,
        "actor_type": "user",
        "actor_id": "alice",
        **extra,
    }
    return Event.stored("memory_written", f"memory_written:p{i}", timestamp, go_json(body))


def config(url: str, **kw: Any) -> FluentdSinkConfig:
    return FluentdSinkConfig.model_validate({"type": "fluentd", "name": "f", "url": url, **kw})


@asynccontextmanager
async def transport(cfg: FluentdSinkConfig) -> AsyncIterator[FluentdTransport]:
    t = make_transport(cfg)
    assert isinstance(t, FluentdTransport)
    await t.open()
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def peer() -> AsyncIterator[FluentdPeer]:
    async with FluentdPeer() as p:
        yield p
        assert p.errors == [], "the transport broke the Forward protocol spec"


def outcomes(results: list[Attempt]) -> set[Outcome]:
    return {r.outcome for r in results}


# -- the message ------------------------------------------------------------------------


def test_one_batch_is_one_forward_mode_message() -> None:
    events = [event(i) for i in range(3)]
    chunk = new_chunk_id()
    raw = encode_message("nexus.events", events, chunk)
    msg = msgpack.unpackb(raw, raw=False)
    assert len(msg) == 3 and msg[0] == "nexus.events"
    assert msg[2] == {"chunk": chunk, "size": 3}
    for (time, record), ev in zip(msg[1], events, strict=True):
        # EventTime: ext type 0, 8 bytes, uint32 seconds + uint32 nanoseconds, big-endian.
        assert isinstance(time, msgpack.ExtType) and time.code == 0 and len(time.data) == 8
        assert struct.unpack(">II", time.data) == (1775824496, 123456789)
        assert ev.wal_time_ns is not None
        assert struct.unpack(">II", time.data) == divmod(ev.wal_time_ns, 1_000_000_000)
        # The record is the webhook body as a map: same keys, same order, same values.
        body = orjson.loads(ev.body("summary"))
        assert list(record.items()) == list(body.items())
        assert record["subject"] == "user:<alice & bob>"
    assert raw.count(b"\xd7\x00") == 3  # fixext 8, type 0, as the spec asks
    # The peer (a spec-following receiver) reads it as a Forward-mode message.
    decoded = parse(msgpack.unpackb(raw, raw=False, ext_hook=ext_hook), 1)
    assert decoded.mode == "forward" and decoded.chunk == chunk
    assert [time_ns(t) for t, _ in decoded.entries] == [ev.wal_time_ns for ev in events]


def test_chunk_ids_are_base64_of_16_random_bytes() -> None:
    ids = {new_chunk_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(base64.b64decode(i, validate=True)) == 16 for i in ids)


def test_full_content_and_an_unusable_wal_time() -> None:
    full = event(1, content={"text": "hello", "n": [1, 2.5, None]})
    broken = event(2, timestamp="not a time")
    msg = msgpack.unpackb(encode_message("t", [full, broken], "c", "full"), raw=False)
    (_, record), (time, _) = msg[1]
    assert record["content"] == {"text": "hello", "n": [1, 2.5, None]}
    # No WAL time to give: the time eventsinkd read the event instead.
    assert struct.unpack(">II", time.data) == divmod(broken.read_ns, 1_000_000_000)


async def test_the_peer_accepts_every_mode_and_refuses_what_breaks_the_spec(
    peer: FluentdPeer,
) -> None:
    """The receiver the other tests trust: each of the spec's four modes, acked."""
    rec = {"k": "v"}
    entry = msgpack.packb([msgpack.ExtType(0, struct.pack(">II", 5, 6)), rec])
    sent = [
        ["t", 1, rec, {"chunk": "m"}],
        ["t", [[7, rec], [8, rec]], {"chunk": "f", "size": 2}],
        ["t", entry * 2, {"chunk": "p", "size": 2}],
        ["t", gzip.compress(entry) + gzip.compress(entry), {"chunk": "c", "compressed": "gzip"}],
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    for m in sent:
        writer.write(msgpack.packb(m))
    u = msgpack.Unpacker(raw=False)
    acks: list[Any] = []
    while len(acks) < 4:
        u.feed(await reader.read(4096))
        acks.extend(u)
    assert acks == [{"ack": c} for c in "mfpc"]
    assert [m.mode for m in peer.messages] == ["message", "forward", "packed", "compressed"]
    assert [len(m.entries) for m in peer.messages] == [1, 2, 2, 2]
    assert peer.messages[2].entries[0][0] == EventTime(5, 6)
    writer.write(msgpack.packb(["t", [[1, rec]], {"chunk": "x", "size": 3}]))
    try:
        answer = await reader.read(4096)
    except ConnectionResetError:
        answer = b""
    assert answer == b""  # refused: the connection is closed, nothing acked
    assert peer.errors == ["option size 3 but 1 entries"]
    peer.errors.clear()
    writer.close()
    await writer.wait_closed()
    with pytest.raises(SpecError):
        parse(["t", [[1, "not a map"]]], 1)


# -- the transport against the peer --------------------------------------------------------


async def test_a_batch_is_delivered_once_acked_and_the_connection_is_kept(
    peer: FluentdPeer,
) -> None:
    async with transport(config(peer.url)) as t:
        assert t.max_batch == 200  # the default
        first = [event(i) for i in range(5)]
        results = await t.send(first)
        assert [r.outcome for r in results] == [Outcome.DELIVERED] * 5
        (msg,) = peer.messages
        assert msg.tag == "nexus.events" and msg.mode == "forward" and msg.acked
        assert msg.records == [orjson.loads(e.body("summary")) for e in first]
        assert outcomes(await t.send([event(9)])) == {Outcome.DELIVERED}
        assert peer.connections == 1  # kept open for the next batch
        assert peer.messages[1].chunk != msg.chunk
    await until(lambda: peer.closed_by_client == 1)  # close() closes it


async def test_batches_in_flight_at_once_each_have_their_own_connection(
    peer: FluentdPeer,
) -> None:
    async with transport(config(peer.url, concurrency=3)) as t:
        peer.hold()  # no acks until all three messages are in
        sends = [asyncio.create_task(t.send([event(i)])) for i in range(3)]
        await peer.wait_messages(3)
        assert peer.open_connections == 3
        assert {m.conn for m in peer.messages} == {1, 2, 3}
        peer.release()
        for task in sends:
            assert outcomes(await task) == {Outcome.DELIVERED}
        for i in range(6):  # the pool is reused, never grows past concurrency
            assert outcomes(await t.send([event(10 + i)])) == {Outcome.DELIVERED}
        assert peer.connections == 3
    await until(lambda: peer.open_connections == 0)


async def test_an_unacked_chunk_is_a_timeout_and_its_late_ack_is_not_taken_for_another(
    peer: FluentdPeer,
) -> None:
    peer.plan = ["withhold"]
    events = [event(i) for i in range(4)]
    async with transport(config(peer.url, timeout_seconds=0.3)) as t:
        results = await t.send(events)
        assert outcomes(results) == {Outcome.TIMEOUT}
        assert "no ack within 0.3s" in results[0].detail
        # The connection the chunk went on is closed: a late ack has nowhere to land...
        await until(lambda: peer.closed_by_client == 1)
        assert await peer.ack_withheld() == 0
        # ...and sending again is a new message with a new chunk id, on a new connection.
        assert outcomes(await t.send(events)) == {Outcome.DELIVERED}
    first, second = peer.messages
    assert not first.acked and second.acked
    assert first.chunk != second.chunk and first.conn != second.conn
    assert first.records == second.records  # the collector saw them twice: at-least-once


async def test_an_ack_naming_another_chunk_is_not_delivery(peer: FluentdPeer) -> None:
    peer.plan = ["wrong"]
    async with transport(config(peer.url)) as t:
        results = await t.send([event(1)])
        assert outcomes(results) == {Outcome.CONNECTION}
        assert "acked another chunk" in results[0].detail
        assert OTHER_CHUNK not in results[0].detail
        assert outcomes(await t.send([event(1)])) == {Outcome.DELIVERED}
    assert peer.connections == 2  # the confused connection was not reused


async def test_a_connection_closed_before_the_ack_is_a_connection_error(
    peer: FluentdPeer,
) -> None:
    peer.plan = ["close"]
    async with transport(config(peer.url)) as t:
        results = await t.send([event(1), event(2)])
        assert outcomes(results) == {Outcome.CONNECTION}
        assert "closed the connection before the ack" in results[0].detail
        assert outcomes(await t.send([event(1), event(2)])) == {Outcome.DELIVERED}
    assert [m.action for m in peer.messages] == ["close", "ack"]


async def test_a_kept_connection_found_closed_is_replaced_without_failing_the_batch(
    peer: FluentdPeer,
) -> None:
    """The keep-alive race: the collector closed a kept connection (idle timeout, restart,
    Fluentd's deny_keepalive) and the next message finds it dead before any answer."""
    peer.plan = ["ack", "close", "ack", "close", "close"]
    async with transport(config(peer.url)) as t:
        assert outcomes(await t.send([event(1)])) == {Outcome.DELIVERED}
        assert outcomes(await t.send([event(2)])) == {Outcome.DELIVERED}  # once more, anew
        assert [(m.action, m.conn) for m in peer.messages] == [
            ("ack", 1),
            ("close", 1),
            ("ack", 2),
        ]
        assert peer.messages[1].chunk != peer.messages[2].chunk
        # Only once: a new connection closed before the ack fails the batch.
        results = await t.send([event(3)])
        assert outcomes(results) == {Outcome.CONNECTION}
        assert [(m.action, m.conn) for m in peer.messages[3:]] == [("close", 2), ("close", 3)]


async def test_a_collector_that_is_down_then_back(peer: FluentdPeer) -> None:
    async with transport(config(peer.url)) as t:
        assert outcomes(await t.send([event(1)])) == {Outcome.DELIVERED}
        await peer.stop()
        results = await t.send([event(2)])
        assert outcomes(results) == {Outcome.CONNECTION}
        assert results[0].detail
        await peer.start()  # the same port
        # The kept connection died with the old collector: a new one is opened.
        assert outcomes(await t.send([event(3)])) == {Outcome.DELIVERED}
    assert peer.ids() == ["memory_written:p1", "memory_written:p3"]
    assert peer.connections == 2


async def test_a_collector_asking_for_shared_key_auth_is_refused_with_a_reason() -> None:
    async with FluentdPeer(helo=True) as p, transport(config(p.url)) as t:
        results = await t.send([event(1)])
        assert outcomes(results) == {Outcome.CONNECTION}
        assert "shared_key" in results[0].detail
        await until(lambda: p.refused == 1)
        assert p.messages == []


async def test_tls_with_the_collectors_ca_and_without(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    async with FluentdPeer(ssl=server) as p:
        assert p.url.startswith("fluentd+tls://")
        async with transport(config(p.url, tls={"ca_file": str(cert)})) as t:
            assert outcomes(await t.send([event(1), event(2)])) == {Outcome.DELIVERED}
        assert p.ids() == ["memory_written:p1", "memory_written:p2"]
        async with transport(config(p.url)) as t:  # the system CAs do not know it
            results = await t.send([event(3)])
            assert outcomes(results) == {Outcome.CONNECTION}
            assert "certificate verify failed" in results[0].detail
        assert p.errors == []


# -- through the daemon ------------------------------------------------------------------


def fluentd_sink(peer: FluentdPeer, name: str = "f", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "fluentd", "url": peer.url, **kw}


async def write(w: NexusWriter, n: int, batch: int = 50) -> list[Written]:
    """Append ``n`` data entries in group-commit batches (in a thread)."""

    def run() -> list[Written]:
        out: list[Written] = []
        for i in range(0, n, batch):
            out += w.append(min(batch, n - i))
        return out

    return [x for x in await asyncio.to_thread(run) if x.entry_type == ""]


def ids(written: list[Written]) -> set[str]:
    return {f"memory_written:{x.payload_id}" for x in written}


async def webhook_bodies(d: Daemon, *, full: bool) -> dict[str, dict[str, Any]]:
    """What a webhook would get for each event, by payload_id (``eventsinkd tail``)."""
    args = ["--from", "beginning", "--no-follow", *(["--full"] if full else [])]
    done = await eventsinkd("tail", d.wal, *args)
    assert done.returncode == 0, done.stderr
    bodies = [json.loads(line) for line in done.stdout.splitlines()]
    return {b["payload_id"]: b for b in bodies}


async def attempts(d: Daemon, sink: str, outcome: str) -> float:
    text = await d.get("/metrics")
    return metric_value(text, "eventsinkd_delivery_attempts_total", sink=sink, outcome=outcome)


async def acked_all(peer: FluentdPeer, want: set[str], timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while missing := want - set(peer.ids()):
        assert loop.time() < deadline, f"{len(missing)} of {len(want)} events never acked"
        await asyncio.sleep(0.05)


async def test_the_daemon_delivers_every_event_once_as_its_webhook_body(
    new_daemon: Callable[..., Daemon],
) -> None:
    async with FluentdPeer() as summary, FluentdPeer() as full:
        d = new_daemon(
            [
                fluentd_sink(summary, "f", max_batch=25, linger_ms=20, concurrency=2),
                fluentd_sink(full, "g", content="full", tag="nexus.full"),
            ]
        )
        w = NexusWriter(d.wal, max_segment_bytes=64 * 1024, payload_bytes=200)
        await d.start()
        written = await write(w, 300)
        await acked_all(summary, ids(written))
        await acked_all(full, ids(written))
        await settle(d)

        by_id = {x.payload_id: x for x in written}
        for peer, tag, bodies in (
            (summary, "nexus.events", await webhook_bodies(d, full=False)),
            (full, "nexus.full", await webhook_bodies(d, full=True)),
        ):
            assert peer.errors == []
            assert set(peer.counts().values()) == {1}  # every event exactly once
            assert len(peer.counts()) == 300
            assert all(m.acked and m.tag == tag and m.mode == "forward" for m in peer.messages)
            assert len({m.chunk for m in peer.messages}) == len(peer.messages)
            for msg in peer.messages:
                for time, record in msg.entries:
                    assert list(record.items()) == list(bodies[record["payload_id"]].items())
                    assert isinstance(time, EventTime)  # nanoseconds kept, not integer seconds
                    assert time.ns == parse_go_time_ns(by_id[record["payload_id"]].timestamp)
        assert all("content" in r for r in full.records())
        assert not any("content" in r for r in summary.records())
        sizes = [len(m.entries) for m in summary.messages]
        assert max(sizes) > 1 and max(sizes) <= 25  # several events per chunk, acked as one
        for sink in ("f", "g"):
            assert await d.metric("bubblefish_events_delivered_total", sink) == 300
            assert await attempts(d, sink, "delivered") == 300
            assert await attempts(d, sink, "timeout") == 0
        assert await d.stop() == 0


async def test_the_daemon_sends_an_unacked_chunk_again_as_a_new_chunk(
    new_daemon: Callable[..., Daemon],
) -> None:
    async with FluentdPeer(plan=["withhold"]) as peer:
        d = new_daemon([fluentd_sink(peer, timeout_seconds=1, max_batch=20)])
        w = NexusWriter(d.wal)
        await d.start()
        written = await write(w, 60)
        await acked_all(peer, ids(written))
        await settle(d)

        withheld = peer.messages[0]
        assert withheld.action == "withhold"
        unacked = {r["payload_id"] for r in withheld.records}
        again = [m for m in peer.acked() if unacked & {r["payload_id"] for r in m.records}]
        assert again and all(m.chunk != withheld.chunk for m in again)
        # At-least-once: the collector saw exactly the unacked chunk's events twice.
        seen = Counter(peer.ids(acked_only=False))
        twice = {i for i, n in seen.items() if n == 2}
        assert twice == {f"{r['event_type']}:{r['payload_id']}" for r in withheld.records}
        assert set(seen.values()) == {1, 2} and set(seen) == ids(written)
        assert await attempts(d, "f", "timeout") == len(withheld.records)
        assert await d.metric("bubblefish_events_delivered_total", "f") == 60
        assert await d.stop() == 0


async def test_the_daemon_retries_a_batch_whose_connection_closed_before_the_ack(
    new_daemon: Callable[..., Daemon],
) -> None:
    async with FluentdPeer(plan=["close", "close"]) as peer:
        d = new_daemon([fluentd_sink(peer, max_batch=10)])
        w = NexusWriter(d.wal)
        await d.start()
        written = await write(w, 50)
        await acked_all(peer, ids(written))
        await settle(d)
        closed = [m for m in peer.messages if m.action == "close"]
        assert len(closed) == 2
        acked_ids = set(peer.ids())
        for m in closed:  # each one's events came through later, in an acked chunk
            assert {f"memory_written:{r['payload_id']}" for r in m.records} <= acked_ids
        assert set(peer.ids()) == ids(written) and peer.errors == []
        assert await attempts(d, "f", "connection_error") == sum(len(m.records) for m in closed)
        assert await d.metric("bubblefish_events_delivered_total", "f") == 50
        assert await d.stop() == 0


async def test_a_collector_down_then_back_pauses_the_sink_and_block_mode_loses_nothing(
    new_daemon: Callable[..., Daemon],
) -> None:
    async with FluentdPeer() as peer:
        d = new_daemon(
            [fluentd_sink(peer, timeout_seconds=1, max_batch=20)],
            overflow="block",
            max_inflight=30,
            pause_after_failures=2,
        )
        w = NexusWriter(d.wal)
        await d.start()
        before = await write(w, 40)
        await acked_all(peer, ids(before))

        await peer.stop()  # the collector goes away
        during = await write(w, 200)
        doc = await until_status(
            d, lambda s: s["sinks"]["f"]["state"] == "paused", what="sink f paused"
        )
        assert doc["sinks"]["f"]["last_error"]
        assert doc["sinks"]["f"]["queue_depth"] <= 30  # the backlog waits in the WAL

        await peer.start()  # back, on the same port
        await acked_all(peer, ids(before) | ids(during))
        await settle(d)
        st = await sink_status(d, "f")
        assert st["state"] != "paused"
        assert (st["delivered"], st["failed"], st["dropped"]) == (240, 0, 0)
        assert set(peer.ids()) == ids(before) | ids(during)
        assert await d.stop() == 0
