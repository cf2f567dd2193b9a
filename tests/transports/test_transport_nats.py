"""``type: nats``: JetStream publishing against a real nats-server
(eventsinkd/devtools/peers/nats.py).

In-process tests drive NatsTransport directly (connection in the background,
pipelined batches, duplicate acks, stream errors, how each reply on the inbox is
read); the rest run the real daemon (tests/support/daemon_harness.py) over a NexusWriter
WAL and read the stream back by sequence. Nothing is mocked but one Event
subclass that proves the default subject needs no body parsing; where a reply a
real stream never gives is needed (late, garbage, a chosen error), a core
subscriber on the real server answers in the stream's place (FakeStream).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import yaml
from daemon_harness import (
    Daemon,
    eventsinkd,
    kill9,
    settle,
    sink_status,
    until,
    until_metric,
    until_status,
    webhook_ids,
)
from engine_harness import entry
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy

from eventsinkd.config.sinks import NatsSinkConfig
from eventsinkd.devtools.peers.nats import (
    NatsPeer,
    add_stream,
    client,
    nats_peer,
    stream_count,
    stream_messages,
)
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.events import MEMORY_WRITTEN, Event
from eventsinkd.transports.contract import Outcome
from eventsinkd.transports.nats import NatsTransport
from eventsinkd.transports.nats_subjects import MAX_CACHED_SUBJECTS, SubjectTemplate, subject_token

ATTEMPTS = "eventsinkd_delivery_attempts_total"


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[NatsPeer]:
    async with nats_peer(tmp_path) as p:
        yield p


def nats_sink(peer: NatsPeer, **kw: Any) -> dict[str, Any]:
    return {"name": "s", "type": "nats", "url": peer.url, "timeout_seconds": 2, **kw}


def event(i: int, **kw: Any) -> Event:
    return Event(MEMORY_WRITTEN, entry(i, **kw), ["summary"])


def transport(**kw: Any) -> NatsTransport:
    return NatsTransport(NatsSinkConfig.model_validate({"name": "t", "type": "nats", **kw}))


async def write(w: NexusWriter, n: int, batch: int = 25) -> None:
    """Append ``n`` data entries in group-commit batches (in a thread)."""

    def run() -> None:
        for i in range(0, n, batch):
            w.append(min(batch, n - i))

    await asyncio.to_thread(run)


def assert_each_once(msgs: list[Any], want: list[str]) -> None:
    counts = Counter(m.msg_id for m in msgs)
    assert set(counts) == set(want), (len(set(counts) - set(want)), len(set(want) - set(counts)))
    assert [i for i, c in counts.items() if c > 1] == []


# -- subjects (no server) ------------------------------------------------------------------


def test_subject_tokens_are_made_valid() -> None:
    assert subject_token("claude-desktop") == "claude-desktop"
    assert subject_token("a.b c*d>e\tf\ng") == "a_b_c_d_e_f_g"
    assert subject_token("") == "_"
    assert subject_token(None) == "_"
    assert subject_token("user:alice") == "user:alice"


class BodylessEvent(Event):
    """An event whose body must not be parsed (the default template needs only its type)."""

    def fields(self) -> dict[str, Any]:
        raise AssertionError("fields() called for a template that needs only event_type")


def test_subject_template_renders_fields_and_knows_its_stream_filter() -> None:
    default = SubjectTemplate("nexus.events.{event_type}")
    plain = event(1)
    bodyless = BodylessEvent.__new__(BodylessEvent)
    bodyless.type = plain.type
    assert default.render(bodyless) == "nexus.events.memory_written"
    assert (default.probe, default.suggestion) == (
        "nexus.events.memory_written",
        "nexus.events.>",
    )

    t = SubjectTemplate("nexus.{source}.{actor_type}-{actor_id}.{event_type}")
    e = event(2, source="claude desktop.v2*", actor_type="", actor_id="a>b")
    assert t.render(e) == "nexus.claude_desktop_v2_._-a_b.memory_written"
    assert (t.probe, t.suggestion) == ("nexus.*.*.memory_written", "nexus.>")
    assert SubjectTemplate("fixed.subject").suggestion == "fixed.subject"


def test_rendered_subjects_are_remembered_by_their_values_only() -> None:
    t = SubjectTemplate("nexus.{source}.{actor_id}.{event_type}")
    alice, bob = event(1, actor_id="alice"), event(2, actor_id="bob")
    assert [t.render(e) for e in (alice, bob, alice, event(3, actor_id="alice"))] == [
        "nexus.claude-desktop.alice.memory_written",
        "nexus.claude-desktop.bob.memory_written",
        "nexus.claude-desktop.alice.memory_written",
        "nexus.claude-desktop.alice.memory_written",
    ]
    # Equal in Python, not in a subject: values that are not strings are not remembered.
    assert t.render(event(4, actor_id=1)) == "nexus.claude-desktop.1.memory_written"
    assert t.render(event(5, actor_id=True)) == "nexus.claude-desktop.True.memory_written"
    # Past the cache's size (emptied when full), still right.
    many = [t.render(event(i, actor_id=f"a{i}")) for i in range(MAX_CACHED_SUBJECTS + 10)]
    assert many[-1] == f"nexus.claude-desktop.a{MAX_CACHED_SUBJECTS + 9}.memory_written"
    assert t.render(bob) == "nexus.claude-desktop.bob.memory_written"


# -- the transport in-process --------------------------------------------------------------


async def test_open_returns_with_the_server_down_then_connects_in_the_background(
    tmp_path: Path,
) -> None:
    peer = NatsPeer(tmp_path)  # not started yet: nothing listens on its port
    t = transport(url=peer.url, timeout_seconds=0.5, max_batch=300)
    try:
        await asyncio.wait_for(t.open(), 30)  # returns although no server answers
        [attempt] = await t.send([event(0)])
        assert attempt.outcome is Outcome.CONNECTION
        assert "not connected to NATS" in attempt.detail, attempt

        await peer.start()
        await add_stream(peer)
        await until(lambda: t.connected, timeout_s=30)

        events = [event(i) for i in range(300)]  # one pipelined batch
        first = await t.send(events)
        assert {a.outcome for a in first} == {Outcome.DELIVERED}, first[:3]
        again = await t.send(events)  # the same webhook-ids: the stream keeps one of each
        assert {a.outcome for a in again} == {Outcome.DELIVERED}
        assert t.duplicates == 300
        msgs = await stream_messages(peer)
        assert [m.msg_id for m in msgs] == [e.id for e in events]  # in order, each once
        assert [m.data for m in msgs] == [e.body("summary") for e in events]
    finally:
        await t.close()
        await t.close()  # safe twice
        await peer.stop()


async def test_stream_errors_are_mapped_per_event(peer: NatsPeer) -> None:
    async with client(peer) as nc:
        js = nc.jetstream()
        # Anything but a tiny body is refused for good (400: message size exceeds maximum).
        await js.add_stream(name="SMALL", subjects=["small.>"], max_msg_size=32)
        # One message, and no room for another (503: maximum messages exceeded).
        await js.add_stream(name="FULL", subjects=["full.>"], max_msgs=1, discard=DiscardPolicy.NEW)
    small = transport(url=peer.url, subject="small.{event_type}")
    full = transport(url=peer.url, subject="full.{event_type}")
    nowhere = transport(url=peer.url, subject="nowhere.{source}.{event_type}")
    try:
        for t in (small, full, nowhere):
            await t.open()
            assert t.connected
        [refused] = await small.send([event(0)])
        assert refused.outcome is Outcome.PERMANENT
        assert "message size exceeds maximum" in refused.detail, refused

        ok, no_room = await full.send([event(1), event(2)])
        outcomes = sorted([ok.outcome, no_room.outcome])
        assert outcomes == sorted([Outcome.DELIVERED, Outcome.RETRY_STATUS]), (ok, no_room)

        # No stream takes the subject: retry later, and say which subject needs one.
        results = await nowhere.send([event(3, source="a.b"), event(4, source="a.b")])
        assert {a.outcome for a in results} == {Outcome.RETRY_STATUS}
        assert "no JetStream stream takes subject nowhere.a_b.memory_written" in results[0].detail
        assert "--subjects 'nowhere.>'" in results[0].detail
    finally:
        for t in (small, full, nowhere):
            await t.close()


class FakeStream:
    """Plays a JetStream stream with a core subscriber on a real server: it answers each
    publish with the reply the test chose for its Nats-Msg-Id, or holds it unanswered.
    (A real stream cannot be made to answer late, with a chosen error or with garbage.)"""

    def __init__(self) -> None:
        self.answers: dict[str, bytes] = {}
        self.held: list[Msg] = []
        self.first: tuple[Msg, bytes] | None = None  # sent before the next answer

    async def on_msg(self, msg: Msg) -> None:
        if self.first is not None:
            (late, payload), self.first = self.first, None
            await late.respond(payload)  # on this connection, so it arrives before the next
        answer = self.answers.get((msg.headers or {})["Nats-Msg-Id"])
        if answer is None:
            self.held.append(msg)
        else:
            await msg.respond(answer)


def ack(seq: int, duplicate: bool = False) -> bytes:
    doc: dict[str, Any] = {"stream": "FAKE", "seq": seq}
    if duplicate:
        doc["duplicate"] = True
    return json.dumps(doc).encode()


def js_error(code: int, err_code: int, description: str) -> bytes:
    error = {"code": code, "err_code": err_code, "description": description}
    return json.dumps(
        {"type": "io.nats.jetstream.api.v1.pub_ack_response", "error": error}
    ).encode()


async def test_each_reply_is_mapped_and_a_late_ack_matches_nothing(peer: NatsPeer) -> None:
    fake = FakeStream()
    events = [event(i) for i in range(7)]
    replies = [
        ack(1),  # stored
        ack(1, duplicate=True),  # already there: delivered, counted
        js_error(400, 10054, "bad thing"),  # refused for good
        js_error(503, 10077, "maximum messages exceeded"),  # later
        js_error(429, 10999, "slow down"),  # later
        b"pong",  # something that is no stream answers on the subject
    ]  # events[6]: no answer at all
    fake.answers = {e.id: r for e, r in zip(events, replies, strict=False)}
    async with client(peer) as nc:
        await nc.subscribe("fake.>", cb=fake.on_msg)
        await nc.flush()
        t = transport(url=peer.url, subject="fake.{event_type}", timeout_seconds=0.5)
        try:
            await t.open()
            got = await t.send(events)  # one batch, one deadline
            assert [a.outcome for a in got] == [
                Outcome.DELIVERED,
                Outcome.DELIVERED,
                Outcome.PERMANENT,
                Outcome.RETRY_STATUS,
                Outcome.RETRY_STATUS,
                Outcome.RETRY_STATUS,
                Outcome.TIMEOUT,
            ], got
            assert t.duplicates == 1
            assert got[2].detail == "JetStream error 400/10054: bad thing"
            assert got[3].detail == "JetStream error 503/10077: maximum messages exceeded"
            assert "not a JetStream ack" in got[5].detail and "pong" in got[5].detail
            assert got[6].detail == "no ack from the stream within 0.5s (fake.memory_written)"

            # The held publish is answered now, just before the next batch's answers (same
            # connection: in that order), as a duplicate ack. Its batch gave up: it must not
            # be taken for an answer to any message of the next batch (whose 7th is in the
            # same place), nor counted.
            [held] = fake.held
            fake.first = (held, ack(2, duplicate=True))
            again = [event(100 + i) for i in range(7)]
            fake.answers = {e.id: js_error(400, 10054, "refused") for e in again}
            got = await t.send(again)
            assert {a.outcome for a in got} == {Outcome.PERMANENT}, got
            assert t.duplicates == 1
        finally:
            await t.close()


async def test_a_message_over_max_payload_is_permanent_for_that_event(tmp_path: Path) -> None:
    async with nats_peer(tmp_path, conf="max_payload: 1024\n") as p:
        await add_stream(p)
        t = transport(url=p.url, content="full")
        try:
            await t.open()
            full = [Event(MEMORY_WRITTEN, entry(i), ["full"]) for i in (0, 2)]
            big = Event(MEMORY_WRITTEN, entry(1, payload={"content": "x" * 2000}), ["full"])
            small, too_big, also = await t.send([full[0], big, full[1]])
            assert (small.outcome, also.outcome) == (Outcome.DELIVERED, Outcome.DELIVERED)
            assert too_big.outcome is Outcome.PERMANENT
            assert "larger than the server's max_payload (1024)" in too_big.detail, too_big
        finally:
            await t.close()
        assert [m.msg_id for m in await stream_messages(p)] == [event(0).id, event(2).id]


async def test_no_responders_for_one_subject_of_a_batch(peer: NatsPeer) -> None:
    """The server's no-responders status comes back on the inbox for that message alone."""
    await add_stream(peer, "MIX", "mix.a.>")
    t = transport(url=peer.url, subject="mix.{source}.{event_type}")
    try:
        await t.open()
        batch = [event(0, source="a"), event(1, source="b"), event(2, source="a")]
        stored, nowhere, also = await t.send(batch)
        assert (stored.outcome, also.outcome) == (Outcome.DELIVERED, Outcome.DELIVERED)
        assert nowhere.outcome is Outcome.RETRY_STATUS
        assert "no JetStream stream takes subject mix.b.memory_written" in nowhere.detail
        assert [m.msg_id for m in await stream_messages(peer, "MIX")] == [batch[0].id, batch[2].id]
    finally:
        await t.close()


async def test_connection_lost_while_awaiting_acks(peer: NatsPeer) -> None:
    fake = FakeStream()  # holds every publish: the batch waits for its acks
    async with client(peer) as nc:
        await nc.subscribe("fake.>", cb=fake.on_msg)
        await nc.flush()
        t = transport(url=peer.url, subject="fake.{event_type}", timeout_seconds=60)
        try:
            await t.open()
            sending = asyncio.create_task(t.send([event(0), event(1)]))
            await until(lambda: len(fake.held) == 2)
            await peer.stop()
            got = await asyncio.wait_for(sending, 30)  # long before the 60 s deadline
            assert {a.outcome for a in got} == {Outcome.CONNECTION}, got
            assert got[0].detail == "connection to NATS lost before the ack"
        finally:
            await t.close()


async def test_tls_with_the_sinks_tls_options(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    conf = f'tls {{ cert_file: "{cert}"\n key_file: "{key}" }}\n'
    trust = ssl.create_default_context(cafile=str(cert))
    async with nats_peer(tmp_path, conf=conf, client_opts={"tls": trust}) as p:
        await add_stream(p)
        tls_url = p.url.replace("nats://", "tls://")
        trusted = transport(url=tls_url, tls={"ca_file": str(cert)})
        untrusted = transport(url=tls_url, timeout_seconds=0.5)  # the system CAs only
        try:
            await trusted.open()
            [ok] = await trusted.send([event(0)])
            assert ok.outcome is Outcome.DELIVERED, ok
            await untrusted.open()
            [refused] = await untrusted.send([event(1)])
            assert refused.outcome is Outcome.CONNECTION
            assert "certificate verify failed" in refused.detail, refused
        finally:
            await trusted.close()
            await untrusted.close()
        assert [m.msg_id for m in await stream_messages(p)] == [event(0).id]


async def test_a_tls_url_never_falls_back_to_plaintext(tmp_path: Path, peer: NatsPeer) -> None:
    """nats-py alone would carry on in plaintext with a server that offers no TLS."""
    await add_stream(peer)
    conf = f'authorization {{ token: "{TOKEN}" }}\n'
    async with nats_peer(tmp_path / "auth", conf=conf, client_opts={"token": TOKEN}) as authed:
        await add_stream(authed)
        no_secret = transport(url=peer.url.replace("nats://", "tls://"), timeout_seconds=0.5)
        with_token = transport(
            url=authed.url.replace("nats://", "tls://"), token=TOKEN, timeout_seconds=0.5
        )
        try:
            for t in (no_secret, with_token):
                await t.open()
                [refused] = await t.send([event(0)])
                assert refused.outcome is Outcome.CONNECTION
                assert "offers no TLS but the sink's url asks for tls://" in refused.detail
        finally:
            await no_secret.close()
            await with_token.close()
        assert await stream_count(peer) == await stream_count(authed) == 0


# -- the daemon ----------------------------------------------------------------------------


async def test_block_mode_every_event_once_with_its_webhook_id_and_body(
    tmp_path: Path, peer: NatsPeer, receiver: WebhookServer
) -> None:
    await add_stream(peer)
    hook = {"name": "w", "url": receiver.url}  # the same events as webhooks, to compare bodies
    d = Daemon(tmp_path, [nats_sink(peer, max_batch=64), hook], overflow="block")
    await d.start()
    try:
        w = NexusWriter(d.wal, max_segment_bytes=64 * 1024)
        await write(w, 600)
        await settle(d)
        want = webhook_ids(w)
        msgs = await stream_messages(peer)
        assert_each_once(msgs, want)
        assert {m.subject for m in msgs} == {"nexus.events.memory_written"}
        bodies = {r.headers["webhook-id"]: r.body for r in receiver.requests}
        assert all(m.data == bodies.get(m.msg_id or "") for m in msgs)
        status = await sink_status(d)
        assert (status["delivered"], status["failed"]) == (600, 0), status
    finally:
        await d.stop()


async def test_kill9_mid_stream_the_stream_still_holds_each_event_once(
    tmp_path: Path, peer: NatsPeer
) -> None:
    await add_stream(peer)
    d = Daemon(tmp_path, [nats_sink(peer)], overflow="block")
    # Cursors are saved once an hour: after kill -9 every event delivered so far is
    # read and published again, so duplicates are certain, not a matter of timing.
    cfg = yaml.safe_load(d.config.read_text())
    cfg["state_save_interval_s"] = 3600
    d.config.write_text(yaml.safe_dump(cfg))
    published: list[str] = []

    async def seen(msg: Any) -> None:  # a core subscriber sees every publish, duplicate or not
        published.append(msg.headers["Nats-Msg-Id"])

    async with client(peer) as nc:
        await nc.subscribe("nexus.events.>", cb=seen)
        await nc.flush()
        w = NexusWriter(d.wal, max_segment_bytes=64 * 1024)
        await d.start()
        writing = asyncio.create_task(write(w, 800, batch=10))
        await until(lambda: len(published) >= 200)  # mid-stream
        await kill9(d)
        await writing
        before = len(set(published))
        await d.start()
        await settle(d)
        await until(lambda: set(published) >= set(webhook_ids(w)))
        await nc.flush()
        await d.stop()

    want = webhook_ids(w)
    msgs = await stream_messages(peer)
    assert_each_once(msgs, want)
    repeated = [i for i, c in Counter(published).items() if c > 1]
    assert before >= 200 and len(repeated) >= before, (len(repeated), before)  # sent twice...
    assert len(msgs) == len(want) == 800  # ...stored once: the duplicate window
    assert "already in the stream" in d.log.read_text()


async def test_server_down_pauses_the_sink_and_it_resumes_with_nothing_lost(
    tmp_path: Path, peer: NatsPeer
) -> None:
    await add_stream(peer)
    d = Daemon(tmp_path, [nats_sink(peer)], overflow="block")
    await d.start()
    try:
        w = NexusWriter(d.wal, max_segment_bytes=64 * 1024)
        await write(w, 200)
        await until_metric(d, "bubblefish_events_delivered_total", 200, sink="s")
        await peer.stop()
        await write(w, 200)
        doc = await until_status(
            d, lambda s: s["sinks"]["s"]["state"] == "paused", what="sink paused"
        )
        assert (
            "not connected to NATS" in doc["sinks"]["s"]["last_error"]
            or "lost" in (doc["sinks"]["s"]["last_error"])
        ), doc["sinks"]["s"]
        await peer.start()  # same port, same store: the stream is back with its messages
        await write(w, 100)
        await settle(d, timeout_s=90)
        assert (await sink_status(d))["state"] == "running"
        assert_each_once(await stream_messages(peer), webhook_ids(w))
        assert await stream_count(peer) == 500
    finally:
        await d.stop()


async def test_ack_timeout_pauses_the_sink_until_a_stream_answers(
    tmp_path: Path, peer: NatsPeer
) -> None:
    d = Daemon(
        tmp_path,
        [nats_sink(peer, subject="blackhole.{event_type}", timeout_seconds=0.5)],
        overflow="block",
    )
    async with client(peer) as nc:
        # A plain subscriber takes the subject and never answers: no ack ever comes.
        sub = await nc.subscribe("blackhole.>")
        await nc.flush()
        await d.start()
        try:
            w = NexusWriter(d.wal)
            await write(w, 50)
            doc = await until_status(
                d, lambda s: s["sinks"]["s"]["state"] == "paused", what="sink paused"
            )
            assert "no ack from the stream within 0.5s" in doc["sinks"]["s"]["last_error"]
            assert await until_metric(d, ATTEMPTS, 1, sink="s", outcome="timeout")
            await sub.unsubscribe()
            await nc.jetstream().add_stream(name="HOLE", subjects=["blackhole.>"])
            await settle(d, timeout_s=90)
            assert_each_once(await stream_messages(peer, "HOLE"), webhook_ids(w))
        finally:
            await d.stop()


async def test_missing_stream_is_a_clear_error_until_one_is_created(
    tmp_path: Path, peer: NatsPeer
) -> None:
    d = Daemon(tmp_path, [nats_sink(peer)], overflow="block")
    await d.start()
    try:
        w = NexusWriter(d.wal)
        await write(w, 100)
        doc = await until_status(
            d, lambda s: s["sinks"]["s"]["state"] == "paused", what="sink paused"
        )
        error = doc["sinks"]["s"]["last_error"]
        assert "no JetStream stream takes subject nexus.events.memory_written" in error, error
        assert "--subjects 'nexus.events.>'" in error
        # Failed batches paused the sink; let a few probes fail too, all in one outage.
        failed = await until_metric(d, ATTEMPTS, 1, sink="s", outcome="retry_status")
        await until_metric(d, ATTEMPTS, failed + 3, sink="s", outcome="retry_status")
        await add_stream(peer)
        await settle(d, timeout_s=90)
        assert_each_once(await stream_messages(peer), webhook_ids(w))
        assert (await sink_status(d))["state"] == "running"
    finally:
        await d.stop()
    records = [json.loads(line) for line in d.log.read_text().splitlines() if line.startswith("{")]
    errors = [r for r in records if r.get("level") in ("error", "ERROR")]
    at_open = [r for r in errors if "events wait until one does" in str(r)]
    per_send = [r for r in errors if "the sink waits and nothing is lost" in str(r)]
    assert len(at_open) == 1, errors  # the check when it connected
    assert len(per_send) == 1, errors  # ...and one error for the outage, not one per event


TOKEN = "tok-3f9a1c77e2"
PASSWORD = "pw-8d21b0c4aa"


@pytest.mark.parametrize("how", ["token", "user_password"])
async def test_credentials_authenticate_and_never_show(tmp_path: Path, how: str) -> None:
    if how == "token":
        conf = f'authorization {{ token: "{TOKEN}" }}\n'
        secret = TOKEN
        (tmp_path / "token").write_text(TOKEN + "\n")
        cred: dict[str, Any] = {"token": f"file:{tmp_path / 'token'}"}
        client_opts: dict[str, Any] = {"token": TOKEN}
    else:
        conf = f'authorization {{ users = [ {{ user: "eventsinkd", password: "{PASSWORD}" }} ] }}\n'
        secret = PASSWORD
        cred = {"user": "eventsinkd", "password": PASSWORD}  # a literal: the worst case
        client_opts = {"user": "eventsinkd", "password": PASSWORD}
    async with nats_peer(tmp_path, conf=conf, client_opts=client_opts) as p:
        with pytest.raises(nats.errors.Error):  # the server does want credentials
            await p.connect(allow_reconnect=False, token=None, user=None, password=None)
        await add_stream(p)
        d = Daemon(tmp_path, [nats_sink(p, **cred)], overflow="block")
        checked = await eventsinkd("check-config", "-c", d.config)
        assert checked.returncode == 0, checked.stderr
        assert secret not in checked.stdout + checked.stderr
        await d.start()
        try:
            w = NexusWriter(d.wal)
            await write(w, 50)
            await settle(d)
            assert_each_once(await stream_messages(p), webhook_ids(w))
        finally:
            await d.stop()
        log = d.log.read_text()
        assert "connected to NATS" in log
        assert secret not in log


async def test_wrong_token_fails_as_a_connection_error_without_showing_it(
    tmp_path: Path,
) -> None:
    conf = f'authorization {{ token: "{TOKEN}" }}\n'
    async with nats_peer(tmp_path, conf=conf, client_opts={"token": TOKEN}) as p:
        wrong = "wrong-77c0e1d5"
        d = Daemon(tmp_path, [nats_sink(p, token=wrong)], overflow="block")
        await d.start()
        try:
            await write(NexusWriter(d.wal), 20)
            doc = await until_status(
                d, lambda s: s["sinks"]["s"]["state"] == "paused", what="sink paused"
            )
            error = doc["sinks"]["s"]["last_error"]
            assert "not connected to NATS" in error and "uthorization" in error, error
            assert (await sink_status(d))["delivered"] == 0
        finally:
            await d.stop()
        assert wrong not in d.log.read_text()
        assert TOKEN not in d.log.read_text()
