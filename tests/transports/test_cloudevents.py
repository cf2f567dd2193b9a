"""``format: cloudevents`` end to end: the real daemon over a NexusWriter WAL, a real aiohttp
receiver (and a real nats-server), and what arrives read with the official CloudEvents SDK
(``cloudevents`` on PyPI): binary, structured and batched mode, memory_written and both
status events, every attribute checked against the WAL entry it came from."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.formats.json import JSONFormat
from daemon_harness import SECRET, Daemon, settle, until
from dateutil.parser import isoparse
from standardwebhooks.webhooks import Webhook

from eventsinkd.devtools.peers.nats import add_stream, nats_peer, stream_messages
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter, Written

ALL_TYPES = ["memory_written", "memory_persisted", "memory_write_failed"]
# Subjects a ce-subject header must percent-encode (space, '"', '%', non-ASCII) or keep ('/').
SUBJECTS = ['team a/"b" 100%', "café ☕", "user:alice"]
CE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


async def write_and_mark(w: NexusWriter, seen: Callable[[set[str]], bool]) -> None:
    """Entries with awkward subjects; once the daemon has sent them, Nexus marks every one
    (some PERMANENT_FAILURE), which makes the two status events."""

    def append() -> None:
        for subject in SUBJECTS:
            w.append(3, subject=subject)

    await asyncio.to_thread(append)
    written = {f"memory_written:{x.payload_id}" for x in w.expected_data()}
    await until(lambda: seen(written), timeout_s=60)
    await asyncio.to_thread(w.rewrite, fraction=1.0, failed=0.4)


def expected(w: NexusWriter) -> dict[str, tuple[str, Written]]:
    """webhook-id -> (event type, the entry) for every event the WAL now makes."""
    out = {}
    for x in w.expected_data():
        out[f"memory_written:{x.payload_id}"] = ("memory_written", x)
        status = w.status(x)
        kind = {"DELIVERED": "memory_persisted", "PERMANENT_FAILURE": "memory_write_failed"}
        if status in kind:
            out[f"{kind[status]}:{x.payload_id}"] = (kind[status], x)
    kinds = {k for k, _ in out.values()}
    assert kinds == set(ALL_TYPES), kinds  # the seed gives both status events
    return out


def default_source(f: dict[str, str]) -> str:
    return f"//{quote(socket.gethostname(), safe='')}/nexus/{quote(f['source'], safe='')}"


def check_event(
    ce: BaseCloudEvent,
    want: dict[str, tuple[str, Written]],
    w: NexusWriter,
    source: Callable[[dict[str, str]], str] = default_source,
) -> str:
    """Every attribute of ``ce`` against the entry its id names; returns the id."""
    kind, x = want[ce.get_id()]
    f = x.fields
    assert ce.get_specversion() == "1.0"
    assert ce.get_id() == f"{kind}:{x.payload_id}"
    assert ce.get_source() == source(f)
    assert ce.get_type() == f"io.bubblefish.nexus.{kind}"
    assert ce.get_subject() == f["subject"]
    assert ce.get_time() == isoparse(x.timestamp)
    assert ce.get_datacontenttype() == "application/json"
    assert ce.get_extension("destination") == f["destination"]
    assert ce.get_extension("actortype") == f["actor_type"]
    assert ce.get_extension("actorid") == f["actor_id"]
    data: Any = ce.get_data()
    if isinstance(data, bytes | str):
        data = json.loads(data)
    body = {
        "event_type": kind,
        "payload_id": x.payload_id,
        "source": f["source"],
        "subject": f["subject"],
        "destination": f["destination"],
        "timestamp": x.timestamp,
        "actor_type": f["actor_type"],
        "actor_id": f["actor_id"],
    }
    if kind != "memory_written":
        body["status"] = w.status(x)
    assert data == body
    assert list(data) == list(body)  # Nexus's field order, as the default body has it
    return ce.get_id()


@pytest.mark.parametrize("mode", ["binary", "structured", "batched"])
async def test_each_mode_parses_with_the_sdk_with_every_attribute_right(
    tmp_path: Path, mode: str
) -> None:
    receiver = await WebhookServer().start()
    sink: dict[str, Any] = {
        "name": "ce",
        "url": receiver.url,
        "secret": SECRET,
        "format": "cloudevents",
        "cloudevents": {"mode": mode},
    }
    if mode == "batched":
        sink |= {"max_batch": 4, "linger_ms": 50}
    d = Daemon(tmp_path, [sink], types=ALL_TYPES)
    try:
        await d.start()
        w = NexusWriter(d.wal, seed=3)

        def received() -> set[str]:
            ids: set[str] = set()
            for r in receiver.requests:
                if mode == "batched":
                    ids |= {e["id"] for e in json.loads(r.body)}
                else:
                    ids.add(r.headers["webhook-id"])
            return ids

        await write_and_mark(w, lambda ids: ids <= received())
        want = expected(w)
        await until(lambda: set(want) <= received(), timeout_s=60)
        await settle(d)
    finally:
        await d.stop()
        await receiver.stop()

    got: list[str] = []
    hook = Webhook(SECRET)
    content_type = {
        "binary": "application/json",
        "structured": "application/cloudevents+json",
        "batched": "application/cloudevents-batch+json",
    }[mode]
    for r in receiver.requests:
        hook.verify(r.body, r.headers)  # signed over the exact body, in every mode
        assert r.headers["Content-Type"] == content_type
        if mode == "batched":
            events = json.loads(r.body)
            assert isinstance(events, list) and 1 <= len(events) <= 4
            for doc in events:
                assert doc["time"] == want[doc["id"]][1].timestamp  # as the WAL has it
                got.append(check_event(JSONFormat().read(None, json.dumps(doc)), want, w))
            continue
        if mode == "binary":
            assert not any(k.lower() == "ce-datacontenttype" for k in r.headers)
            subject = want[r.headers["webhook-id"]][1].fields["subject"]
            # The HTTP binding: space, '"', '%' and all but printable ASCII percent-encoded.
            assert r.headers["ce-subject"] == quote(subject, safe=CE_SAFE)
        else:
            assert json.loads(r.body)["time"] == want[r.headers["webhook-id"]][1].timestamp
        headers = {k.lower(): v for k, v in r.headers.items()}
        ce = from_http_event(HTTPMessage(headers=headers, body=r.body))
        got.append(check_event(ce, want, w))
    assert sorted(got) == sorted(want)  # each once


async def test_nats_messages_are_structured_cloudevents(tmp_path: Path) -> None:
    async with nats_peer(tmp_path / "nats") as peer:
        await add_stream(peer)
        receiver = await WebhookServer().start()  # seen: the status events can be written
        sinks = [
            {
                "name": "bus",
                "type": "nats",
                "url": peer.url,
                "format": "cloudevents",
                "cloudevents": {"source": "/nexus/{source}/{actor_type}"},
                "max_batch": 8,
            },
            {"name": "hook", "url": receiver.url},
        ]
        d = Daemon(tmp_path / "d", sinks, types=ALL_TYPES)
        try:
            await d.start()
            w = NexusWriter(d.wal, seed=3)
            await write_and_mark(w, lambda ids: ids <= set(receiver.ids))
            want = expected(w)
            await until(lambda: set(want) <= set(receiver.ids), timeout_s=60)
            await settle(d)
            msgs = await stream_messages(peer)
        finally:
            await d.stop()
            await receiver.stop()
    got = []
    for m in msgs:
        ce = JSONFormat().read(None, m.data)
        assert m.msg_id == ce.get_id()
        kind, _ = want[ce.get_id()]
        assert m.subject == f"nexus.events.{kind}"
        got.append(check_event(ce, want, w, lambda f: f"/nexus/{quote(f['source'], safe='')}/user"))
    assert sorted(got) == sorted(want)


async def test_data_is_the_transform_and_the_attributes_the_entrys(tmp_path: Path) -> None:
    receiver = await WebhookServer().start()
    sink = {
        "name": "ce",
        "url": receiver.url,
        "secret": SECRET,
        "format": "cloudevents",
        "cloudevents": {"mode": "binary"},
        "transform": "{memory: .payload_id, about: .subject}",
    }
    d = Daemon(tmp_path, [sink])
    try:
        await d.start()
        w = NexusWriter(d.wal)
        written = await asyncio.to_thread(w.append, 3, subject="team a/b")
        await receiver.wait_for(3)
    finally:
        await d.stop()
        await receiver.stop()
    by_id = {f"memory_written:{x.payload_id}": x for x in written}
    for r in receiver.requests:
        Webhook(SECRET).verify(r.body, r.headers)  # signed over the transformed body
        headers = {k.lower(): v for k, v in r.headers.items()}
        ce = from_http_event(HTTPMessage(headers=headers, body=r.body))
        x = by_id[ce.get_id()]
        data: Any = ce.get_data()
        if isinstance(data, bytes | str):
            data = json.loads(data)
        assert data == {"memory": x.payload_id, "about": "team a/b"}
        assert r.body == json.dumps(data, separators=(",", ":")).encode()  # the body is data
        assert (ce.get_subject(), ce.get_extension("actorid")) == (
            "team a/b",
            x.fields["actor_id"],
        )
        assert ce.get_source() == default_source(x.fields)
