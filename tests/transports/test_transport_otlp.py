"""``type: otlp``: events as OTLP/HTTP log records, JSON or protobuf.

The encoders are checked against the official opentelemetry-proto definitions;
the transport against a real OTLP/HTTP receiver on 127.0.0.1
(eventsinkd/devtools/peers/otlp.py), which decodes every request strictly and fails the test
on a body that is not valid OTLP; the whole path through a real
`eventsinkd run` subprocess reading a WAL written by NexusWriter. Nothing is
mocked.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from aiohttp import web
from conftest import collect
from daemon_harness import (
    Daemon,
    accounting,
    eventsinkd,
    metric_value,
    settle,
    sink_status,
    until_metric,
    until_status,
    wait_cursor_at_end,
    webhook_ids,
)
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from eventsinkd import __version__
from eventsinkd.common.ports import free_port, listening_port
from eventsinkd.config.sinks import OtlpSinkConfig
from eventsinkd.devtools.peers.otlp import (
    OK,
    Answer,
    OtlpPeer,
    Request,
    log_record_id,
    status_protobuf,
)
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.events import ContentMode, Event, event_body
from eventsinkd.transports.contract import Attempt, Outcome
from eventsinkd.transports.otlp import (
    ATTRIBUTES,
    Encoder,
    OtlpTransport,
    build_request,
    encode_json,
    encode_protobuf,
)
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.gotime import parse_go_time_ns

ENCODINGS = ["json", "protobuf"]
SECRET_HEADER = "Bearer otlp-test-secret-4f9a"

# -- the encoders ------------------------------------------------------------------------


def entry(n: int, **kw: Any) -> Entry:
    fields: dict[str, Any] = {
        "payload_id": f"{n:032x}",
        "idempotency_key": f"idem-{n}",
        "status": "PENDING",
        "timestamp": "2026-04-10T12:34:56.123456789Z",
        "source": "claude-desktop",
        "destination": "sqlite",
        "subject": "user:alice",
        "actor_type": "user",
        "actor_id": f"user-{n}",
        "entry_type": "",
        "payload": {"content": 'café <b> & \u2028 "q" \\ 🐟\n', "n": n},
        "monotonic_seq": n,
    }
    fields.update(kw)
    fields["raw_payload"] = msgspec.Raw(orjson.dumps(fields.pop("payload")))  # as the line has it
    return Entry(**fields)


def awkward_events() -> list[Event]:
    """Events with what could trip an encoder: escapes, non-ASCII, empty fields, odd times."""
    entries = [
        entry(1),
        entry(2, subject="", actor_id="", source="<script>&amp;"),
        entry(3, timestamp="2026-04-10T12:34:56Z"),  # no fraction
        entry(4, timestamp="2026-04-10T14:34:56.5+02:00"),  # an offset
        entry(5, timestamp="not a time"),  # wal_time_ns unknown: no timeUnixNano
        entry(6, source="日本語 メモ", destination="\u2029"),
    ]
    return [Event("memory_written", e, ("summary", "full")) for e in entries]


def attrs_of(record: LogRecord) -> list[tuple[str, str]]:
    assert all(kv.value.WhichOneof("value") == "string_value" for kv in record.attributes)
    return [(kv.key, kv.value.string_value) for kv in record.attributes]


@pytest.mark.parametrize("content", ["summary", "full"])
def test_json_encoding_is_the_canonical_otlp_json_of_the_request(content: Any) -> None:
    events = awkward_events()
    body = encode_json(events, content, "svc")
    # What json_format makes of the same request: the OTLP JSON mapping (camelCase keys,
    # integer enums, 64-bit integers as strings, defaults left out). Parse is strict.
    message = json_format.Parse(body, ExportLogsServiceRequest(), ignore_unknown_fields=False)
    assert message == build_request(events, content, "svc")
    assert orjson.loads(body) == json_format.MessageToDict(message, use_integers_for_enums=True)


def test_json_encoding_shape() -> None:
    event = awkward_events()[0]
    doc = orjson.loads(encode_json([event], "full", "nexus-prod"))
    body = event.body("full").decode()
    assert doc == {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "nexus-prod"}}]
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "eventsinkd", "version": __version__},
                        "logRecords": [
                            {
                                "timeUnixNano": "1775824496123456789",
                                "observedTimeUnixNano": str(event.read_ns),
                                "severityNumber": 9,
                                "severityText": "INFO",
                                "body": {"stringValue": body},
                                "attributes": [
                                    {"key": k, "value": {"stringValue": v}}
                                    for k, v in [
                                        ("event_type", "memory_written"),
                                        ("payload_id", f"{1:032x}"),
                                        ("source", "claude-desktop"),
                                        ("subject", "user:alice"),
                                        ("destination", "sqlite"),
                                        ("actor_type", "user"),
                                        ("actor_id", "user-1"),
                                    ]
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    assert "\\u003cb\\u003e" in body  # the webhook body, Go's escapes and all


@pytest.mark.parametrize("content", ["summary", "full"])
def test_protobuf_encoding_carries_each_event(content: Any) -> None:
    events = awkward_events()
    message = ExportLogsServiceRequest.FromString(encode_protobuf(events, content, "svc"))
    json_message = json_format.Parse(
        encode_json(events, content, "svc"), ExportLogsServiceRequest()
    )
    assert message == json_message  # the two encodings say the same
    [resource_logs] = message.resource_logs
    assert attrs_of_kv(resource_logs.resource.attributes) == [("service.name", "svc")]
    [scope_logs] = resource_logs.scope_logs
    assert (scope_logs.scope.name, scope_logs.scope.version) == ("eventsinkd", __version__)
    assert len(scope_logs.log_records) == len(events)
    for event, record in zip(events, scope_logs.log_records, strict=True):
        assert record.time_unix_nano == (parse_go_time_ns(event.timestamp) or 0)
        assert record.observed_time_unix_nano == event.read_ns
        assert (record.severity_number, record.severity_text) == (9, "INFO")
        assert record.body.string_value.encode() == event.body(content)
        fields = event.fields()
        assert attrs_of(record) == [(k, fields[k]) for k in ATTRIBUTES]
    assert [r.time_unix_nano for r in scope_logs.log_records][2:5] == [
        1775824496000000000,
        1775824496500000000,
        0,  # "not a time": unknown
    ]


def attrs_of_kv(kvs: Sequence[Any]) -> list[tuple[str, str]]:
    return [(kv.key, kv.value.string_value) for kv in kvs]


def odd_events() -> list[Event]:
    """Events the per-record fast paths hand to the general one: fields missing, null or not
    strings (a dead letter's body is stored as it was sent, so any JSON object can come back),
    and WAL times a fixed64 cannot hold."""
    base = orjson.loads(event_body(entry(7)))

    def stored(n: int, timestamp: str, **changes: Any) -> Event:
        body = {k: v for k, v in {**base, **changes}.items() if v is not ...}
        return Event.stored("memory_written", f"memory_written:s{n}", timestamp, orjson.dumps(body))

    return [
        stored(1, "2026-04-10T12:34:56.1Z", subject=...),  # missing: no attribute
        stored(2, "2026-04-10T12:34:56.2Z", actor_id=None),  # null: no attribute
        stored(3, "2026-04-10T12:34:56.3Z", actor_type=3, source=True),  # str(value)
        # Go's zero time (0001-01-01) and a time after 2554: unknown, like "not a time"
        Event("memory_written", entry(4, timestamp="0001-01-01T00:00:00Z"), ("summary", "full")),
        Event("memory_written", entry(5, timestamp="2600-01-01T00:00:00Z"), ("summary", "full")),
        Event("memory_written", entry(6, timestamp="2026-04-10T12:34:56.7Z"), ("summary", "full")),
    ]


@pytest.mark.parametrize("events", [awkward_events, odd_events])
def test_json_records_assembled_from_bytes_are_the_general_paths_exactly(
    events: Callable[[], list[Event]],
) -> None:
    """The JSON body is assembled from pre-encoded parts: byte for byte what orjson makes of
    the whole request built as dicts (the general path, Encoder.json_record)."""
    batch = events()
    content: ContentMode
    for content in ("summary", "full"):
        encoder = Encoder(content, 'svc "%s" \\ 日本')
        records = [encoder.json_record(e) for e in batch]
        assert encoder.json(batch) == orjson.dumps(encoder.json_request(records))
        assert encoder.json(batch[:1]) == orjson.dumps(encoder.json_request(records[:1]))
        assert encoder.json([]) == orjson.dumps(encoder.json_request([]))


def test_odd_events_are_encoded_as_otlp_says() -> None:
    events = odd_events()
    body = encode_json(events, "summary", "svc")
    message = json_format.Parse(body, ExportLogsServiceRequest(), ignore_unknown_fields=False)
    assert orjson.loads(body) == json_format.MessageToDict(message, use_integers_for_enums=True)
    assert ExportLogsServiceRequest.FromString(encode_protobuf(events, "summary", "svc")) == message
    records = message.resource_logs[0].scope_logs[0].log_records
    attrs = [dict(attrs_of(r)) for r in records]
    assert "subject" not in attrs[0] and "actor_id" not in attrs[1]
    assert (attrs[2]["actor_type"], attrs[2]["source"]) == ("3", "True")
    assert [r.time_unix_nano for r in records] == [
        1775824496100000000,
        1775824496200000000,
        1775824496300000000,
        0,  # before 1970: not a fixed64, unknown
        0,  # after 2554: the same
        1775824496700000000,
    ]


# -- the transport against a real receiver -----------------------------------------------


@pytest.fixture
async def peer() -> AsyncIterator[OtlpPeer]:
    srv = await OtlpPeer().start()
    try:
        yield srv
    finally:
        await srv.stop()


def sink_cfg(url: str, encoding: str = "json", **kw: Any) -> OtlpSinkConfig:
    return OtlpSinkConfig.model_validate(
        {"name": "s", "type": "otlp", "url": url, "encoding": encoding, **kw}
    )


async def send_once(cfg: OtlpSinkConfig, events: Sequence[Event]) -> list[Attempt]:
    transport = OtlpTransport(cfg)
    await transport.open()
    try:
        return list(await transport.send(events))
    finally:
        await transport.close()
        await transport.close()  # safe twice


def answering(answer: Answer) -> Callable[[int, Request], Any]:
    async def behaviour(_n: int, _req: Request) -> Answer:
        return answer

    return behaviour


EVENTS = 5


def answer_id(a: Answer) -> str:
    """A test id: "200", "200-rejected2-message", "503-retry-after"..."""
    parts = [str(a.status)]
    parts += [f"rejected{a.rejected}"] if a.rejected else []
    parts += ["retry-after"] if a.retry_after else []
    parts += ["message"] if a.message else []
    return "-".join(parts)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("answer", "want"),
    [
        (OK, [(Outcome.DELIVERED, None, "HTTP 200")] * EVENTS),
        # A warning without rejected records: everything is delivered.
        (Answer(message="slow down"), [(Outcome.DELIVERED, None, "HTTP 200")] * EVENTS),
        # Partial success: the last N are marked refused (the response does not say which).
        (
            Answer(rejected=2, message="too old"),
            [(Outcome.DELIVERED, None, "HTTP 200")] * 3
            + [(Outcome.PERMANENT, None, "OTLP partial success: 2 of 5 records rejected: too old")]
            * 2,
        ),
        (
            Answer(rejected=99),
            [(Outcome.PERMANENT, None, "OTLP partial success: 5 of 5 records rejected")] * EVENTS,
        ),
        *[
            (
                Answer(status, retry_after="7", message="busy"),
                [(Outcome.RETRY_STATUS, 7.0, f"HTTP {status}: busy")] * EVENTS,
            )
            for status in (429, 502, 503, 504)
        ],
        # OTLP retries only those four: every other status is final, 408 and 500 included.
        *[
            (Answer(status, message="no"), [(Outcome.PERMANENT, None, f"HTTP {status}: no")] * 5)
            for status in (400, 401, 403, 404, 408, 413, 500, 501)
        ],
        (Answer(400), [(Outcome.PERMANENT, None, "HTTP 400")] * EVENTS),  # no message
    ],
    ids=lambda v: (
        answer_id(v) if isinstance(v, Answer) else "+".join(dict.fromkeys(o for o, *_ in v))
    ),
)
async def test_outcomes(
    peer: OtlpPeer, encoding: str, answer: Answer, want: list[tuple[Outcome, float | None, str]]
) -> None:
    peer.behaviour = answering(answer)
    events = awkward_events()[:EVENTS]
    got = await send_once(sink_cfg(peer.url, encoding), events)
    assert [tuple(a) for a in got] == want
    [req] = peer.requests  # one request for the batch
    assert peer.errors == []
    assert [log_record_id(r) for r in req.records] == [e.id for e in events]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_request_headers(peer: OtlpPeer, encoding: str) -> None:
    headers = {"Authorization": SECRET_HEADER, "X-Scope-OrgID": "tenant-1"}
    cfg = sink_cfg(peer.url + "/", encoding, headers=headers)  # a trailing slash is fine
    got = await send_once(cfg, awkward_events()[:1])
    assert got[0].outcome is Outcome.DELIVERED
    [req] = peer.requests
    assert (
        req.content_type
        == {"json": "application/json", "protobuf": "application/x-protobuf"}[encoding]
    )
    assert req.headers["Authorization"] == SECRET_HEADER
    assert req.headers["X-Scope-OrgID"] == "tenant-1"
    assert req.headers["User-Agent"] == f"eventsinkd/{__version__}"
    assert SECRET_HEADER not in repr(cfg)


async def test_concurrent_sends_share_one_session(peer: OtlpPeer) -> None:
    started = 0
    release = asyncio.Event()

    async def hold(_n: int, _req: Request) -> Answer:
        nonlocal started
        started += 1
        if started == 2:  # both connections of the pool are busy at once
            release.set()
        await release.wait()
        return OK

    peer.behaviour = hold
    cfg = sink_cfg(peer.url, concurrency=2)
    transport = OtlpTransport(cfg)
    await transport.open()
    try:
        batches = [awkward_events() for _ in range(8)]
        results = await asyncio.wait_for(asyncio.gather(*(transport.send(b) for b in batches)), 30)
    finally:
        await transport.close()
    assert all(a.outcome is Outcome.DELIVERED for r in results for a in r)
    assert len(peer.requests) == 8 and peer.errors == []
    assert sorted(peer.all_ids()) == sorted(e.id for b in batches for e in b)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_odd_events_are_taken_by_a_strict_receiver(peer: OtlpPeer, encoding: str) -> None:
    events = odd_events()
    got = await send_once(sink_cfg(peer.url, encoding), events)
    assert [a.outcome for a in got] == [Outcome.DELIVERED] * len(events)
    assert peer.errors == []
    [req] = peer.requests
    assert [r.body.string_value.encode() for r in req.records] == [
        e.body("summary") for e in events
    ]


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Callable[[web.Request], Any]], Any]]:
    """Start an aiohttp server answering POST /v1/logs with a given handler; its base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], Any]) -> str:
        app = web.Application()
        app.router.add_post("/v1/logs", handler)
        app.router.add_route("*", "/elsewhere/v1/logs", handler)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{listening_port(runner)}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_responses_that_are_not_otlp(raw: Any) -> None:
    seen: list[str] = []

    async def handler(req: web.Request) -> web.StreamResponse:
        seen.append(req.path)
        kind = req.headers["X-Answer"]
        if kind == "text":
            return web.Response(text="ok")
        if kind == "garbage-protobuf":
            return web.Response(body=b"\xff\xff\xff", content_type="application/x-protobuf")
        if kind == "garbage-json":
            return web.Response(body=b"{not json", content_type="application/json")
        if kind == "status-protobuf":  # a google.rpc.Status, as the spec says
            body = status_protobuf(8, "quota exceeded")
            return web.Response(status=429, body=body, content_type="application/x-protobuf")
        if kind == "huge":  # too long to parse: the status alone decides
            body = json.dumps({"message": "x" * 100_000}).encode()
            return web.Response(status=400, body=body, content_type="application/json")
        assert kind == "redirect"
        raise web.HTTPTemporaryRedirect(location="/elsewhere/v1/logs")

    url = await raw(handler)
    events = awkward_events()[:2]

    async def outcome(kind: str) -> set[tuple[Any, ...]]:
        got = await send_once(sink_cfg(url, headers={"X-Answer": kind}), events)
        return {tuple(a) for a in got}

    # A 2xx whose body is not an ExportLogsServiceResponse still means accepted.
    assert await outcome("text") == {(Outcome.DELIVERED, None, "HTTP 200")}
    assert await outcome("garbage-protobuf") == {(Outcome.DELIVERED, None, "HTTP 200")}
    assert await outcome("garbage-json") == {(Outcome.DELIVERED, None, "HTTP 200")}
    assert await outcome("status-protobuf") == {
        (Outcome.RETRY_STATUS, None, "HTTP 429: quota exceeded")
    }
    assert await outcome("huge") == {(Outcome.PERMANENT, None, "HTTP 400")}
    # Not followed: the spec leaves it open, and a redirect must not carry the headers away.
    assert await outcome("redirect") == {
        (
            Outcome.PERMANENT,
            None,
            "HTTP 307: a redirect to /elsewhere/v1/logs (redirects are not followed)",
        )
    }
    assert "/elsewhere/v1/logs" not in seen


async def test_connection_refused_and_timeout(raw: Any) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    [a, b] = await send_once(sink_cfg(nowhere), awkward_events()[:2])
    assert a == b and a.outcome is Outcome.CONNECTION and a.retry_after is None

    never = asyncio.Event()

    async def silent(_req: web.Request) -> web.StreamResponse:
        await never.wait()  # released when the test ends (runner cleanup cancels it)
        return web.Response()

    url = await raw(silent)
    [a] = await send_once(sink_cfg(url, timeout_seconds=0.3), awkward_events()[:1])
    assert tuple(a) == (Outcome.TIMEOUT, None, "no answer within 0.3s")


async def test_https_with_the_sinks_tls_options(tls_files: tuple[Path, Path]) -> None:
    import ssl

    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = await OtlpPeer().start(ssl_context=server_ctx)
    try:
        assert srv.url.startswith("https://")
        events = awkward_events()[:3]
        trusted = await send_once(sink_cfg(srv.url, tls={"ca_file": str(cert)}), events)
        assert {a.outcome for a in trusted} == {Outcome.DELIVERED}
        unchecked = await send_once(sink_cfg(srv.url, tls={"verify": False}), events)
        assert {a.outcome for a in unchecked} == {Outcome.DELIVERED}
        [refused, _, _] = await send_once(sink_cfg(srv.url), events)  # not a trusted CA
        assert refused.outcome is Outcome.CONNECTION
        assert "certificate" in refused.detail.lower()
        assert len(srv.requests) == 2 and srv.errors == []
    finally:
        await srv.stop()


# -- through the daemon ------------------------------------------------------------------


def otlp_sink(url: str, encoding: str = "json", **kw: Any) -> dict[str, Any]:
    return {
        "name": "s",
        "type": "otlp",
        "url": url,
        "encoding": encoding,
        "service_name": "nexus-test",
        "max_batch": 50,
        "linger_ms": 20,
        "headers": {"Authorization": SECRET_HEADER},
        **kw,
    }


def write(d: Daemon, n: int, per_append: int = 20) -> NexusWriter:
    w = NexusWriter(d.wal, max_segment_bytes=64 * 1024)
    for _ in range(n // per_append):
        w.append(per_append)
    return w


async def listed(d: Daemon) -> list[dict[str, Any]]:
    res = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.mark.parametrize(("encoding", "content"), [("json", "summary"), ("protobuf", "full")])
async def test_every_event_arrives_once_as_a_log_record(
    peer: OtlpPeer, new_daemon: Callable[..., Daemon], encoding: str, content: Any
) -> None:
    n = 300
    d = new_daemon([otlp_sink(peer.url, encoding, content=content)], overflow="block")
    w = write(d, n)
    ids = webhook_ids(w)
    started_ns = time.time_ns()
    await d.start()
    await peer.wait_for_records(set(ids))
    await settle(d)
    assert await accounting(d, "s") == (n, 0, 0)
    assert peer.errors == []
    assert Counter(peer.all_ids()) == Counter(ids)  # exactly once each

    # What a webhook receiver would get, from the same WAL read by the real reader.
    wal = {f"memory_written:{r.entry.payload_id}": r.entry for r in await collect(d.wal)}
    done_ns = time.time_ns()
    for record in peer.accepted():
        e = wal[log_record_id(record)]
        assert record.body.string_value.encode() == event_body(e, content)
        assert record.time_unix_nano == parse_go_time_ns(e.timestamp)
        assert started_ns <= record.observed_time_unix_nano <= done_ns
        assert record.observed_time_unix_nano >= record.time_unix_nano
        assert (record.severity_number, record.severity_text) == (9, "INFO")
        fields = json.loads(event_body(e, content))
        assert attrs_of(record) == [(k, fields[k]) for k in ATTRIBUTES]

    # Batched: one ResourceLogs and one ScopeLogs per request, several records in each.
    assert len(peer.requests) < n
    assert max(len(r.records) for r in peer.requests) > 1
    for req in peer.requests:
        [rl] = req.message.resource_logs
        assert attrs_of_kv(rl.resource.attributes) == [("service.name", "nexus-test")]
        [sl] = rl.scope_logs
        assert (sl.scope.name, sl.scope.version) == ("eventsinkd", __version__)
        assert req.headers["Authorization"] == SECRET_HEADER
    assert (await sink_status(d))["type"] == "otlp"
    assert SECRET_HEADER not in await d.get("/status")
    assert await d.stop() == 0
    assert SECRET_HEADER not in d.log.read_text()


async def test_collector_down_then_back_loses_nothing(new_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    n = 200
    d = new_daemon([otlp_sink(f"http://127.0.0.1:{port}")], overflow="block", max_inflight=50)
    w = write(d, n)
    await d.start()
    down = await until_status(d, lambda s: s["sinks"]["s"]["state"] == "paused", what="sink paused")
    assert "127.0.0.1" in down["sinks"]["s"]["last_error"]
    srv = await OtlpPeer().start(port)
    try:
        await srv.wait_for_records(set(webhook_ids(w)))
        status = (await settle(d))["sinks"]["s"]
        await wait_cursor_at_end(d, w)
        assert status["state"] == "running"
        assert await accounting(d, "s") == (n, 0, 0)
        assert Counter(srv.all_ids()) == Counter(webhook_ids(w))
        assert srv.errors == []
        assert await d.stop() == 0
    finally:
        await srv.stop()


async def test_503_with_retry_after_then_success(
    peer: OtlpPeer, new_daemon: Callable[..., Daemon]
) -> None:
    arrived: list[tuple[float, list[str]]] = []

    async def busy_once(n: int, req: Request) -> Answer:
        arrived.append((time.monotonic(), [log_record_id(r) for r in req.records]))
        return Answer(503, retry_after="1", message="busy") if n == 0 else OK

    peer.behaviour = busy_once
    d = new_daemon([otlp_sink(peer.url, "protobuf")], overflow="block")
    w = write(d, 40)
    ids = webhook_ids(w)
    await d.start()
    await peer.wait_for_records(set(ids))
    await settle(d)
    assert await accounting(d, "s") == (40, 0, 0)
    assert sorted(peer.accepted_ids()) == sorted(ids)  # once each, after the 503
    first_at, first_ids = arrived[0]
    for i in first_ids:
        again = next(at for at, got in arrived[1:] if i in got)
        # Retry-After: 1 was honoured (the daemon's own backoff here is 0.1 s).
        assert again - first_at >= 1.0
    text = await d.get("/metrics")
    assert metric_value(text, "eventsinkd_delivery_attempts_total", outcome="retry_status") == len(
        first_ids
    )
    assert await d.stop() == 0


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_partial_success_rejected_records_become_dead_letters(
    peer: OtlpPeer, new_daemon: Callable[..., Daemon], encoding: str
) -> None:
    rejected = 3

    async def partial_once(n: int, _req: Request) -> Answer:
        return Answer(rejected=rejected, message="timestamps too old") if n == 0 else OK

    peer.behaviour = partial_once
    n = 40
    # A long linger so that the first request holds many records, whatever the load.
    d = new_daemon([otlp_sink(peer.url, encoding, linger_ms=300)], overflow="block")
    w = write(d, n)
    ids = webhook_ids(w)
    await d.start()
    await until_metric(d, "bubblefish_events_failed_total", rejected, sink="s")
    first = [log_record_id(r) for r in peer.requests[0].records]
    assert len(first) > rejected
    refused = first[-rejected:]  # the transport marks the last N of the request
    await peer.wait_for_records(set(ids) - set(refused))
    status = (await settle(d))["sinks"]["s"]
    await wait_cursor_at_end(d, w)  # block mode: past the dead letters too
    assert await accounting(d, "s") == (n - rejected, rejected, 0)
    assert (status["failed"], status["dead_letters"]) == (rejected, rejected)
    assert Counter(peer.all_ids()) == Counter(ids)  # refused ones are not sent again
    letters = await listed(d)
    assert sorted(x["webhook_id"] for x in letters) == sorted(refused)
    for x in letters:
        assert x["attempts"] == 1
        assert x["last_outcome"] == (
            f"OTLP partial success: {rejected} of {len(first)} records rejected: timestamps too old"
        )
        assert x["event"]["payload_id"] == x["webhook_id"].split(":")[1]

    # Replayed through the same transport: one record per request, accepted this time.
    res = await eventsinkd("dead-letters", "replay", "-c", d.config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{rejected} delivered, 0 failed" in res.stdout
    assert Counter(peer.accepted_ids()) == Counter(ids)
    assert await listed(d) == []
    assert peer.errors == []
    assert await d.stop() == 0


async def test_400_is_permanent(peer: OtlpPeer, new_daemon: Callable[..., Daemon]) -> None:
    peer.behaviour = answering(Answer(400, message="bad records"))
    n = 20
    d = new_daemon([otlp_sink(peer.url)], overflow="block")
    w = write(d, n)
    ids = webhook_ids(w)
    await d.start()
    await until_metric(d, "bubblefish_events_failed_total", n, sink="s")
    status = (await settle(d))["sinks"]["s"]
    await wait_cursor_at_end(d, w)
    assert status["state"] == "running" and status["paused_since"] is None
    assert await accounting(d, "s") == (0, n, 0)
    assert Counter(peer.all_ids()) == Counter(ids)  # each tried once, never again
    letters = await listed(d)
    assert sorted(x["webhook_id"] for x in letters) == sorted(ids)
    assert {(x["attempts"], x["last_outcome"]) for x in letters} == {(1, "HTTP 400: bad records")}
    assert peer.errors == []
    assert await d.stop() == 0
