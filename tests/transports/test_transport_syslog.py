"""``type: syslog``: RFC 5424 messages over UDP, TCP (RFC 6587) and TLS (RFC 5425).

Message format and size rules are checked on the transport directly; delivery through the
real daemon into a real rsyslogd (imtcp with octet counting and with LF framing, imudp),
faults with rsyslogd going away and with a small RFC 6587 peer that resets a connection in the
middle of a batch, and TLS against an in-process TLS peer with an openssl-made certificate
(Debian's rsyslog has no TLS driver without rsyslog-gnutls/-openssl).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import ODD_GO_TIMESTAMPS, need_tool, self_signed
from daemon_harness import (
    Daemon,
    accounting,
    eventsinkd,
    metric_value,
    settle,
    until,
    until_metric,
    until_status,
    webhook_ids,
)
from engine_harness import entry

from eventsinkd.common.ports import free_port
from eventsinkd.config.options import TlsConfig
from eventsinkd.config.sinks import SyslogSinkConfig
from eventsinkd.devtools.peers.rsyslogd import FieldsRsyslogd
from eventsinkd.devtools.peers.syslog import (
    SyslogPeer,
    UdpPeer,
    parse_5424,
    server_context,
)
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.events import Event, event_body, go_json
from eventsinkd.metrics import Metrics
from eventsinkd.transports.contract import Outcome
from eventsinkd.transports.syslog import (
    SD_ID,
    SECONDS_KEPT,
    SyslogTransport,
    rfc5424_timestamp,
    sd_escape,
    utf8_cut,
)
from eventsinkd.wal.gotime import parse_go_time_ns

HOST = socket.gethostname()


def cfg(url: str, **kw: Any) -> SyslogSinkConfig:
    return SyslogSinkConfig.model_validate({"type": "syslog", "name": "s", "url": url, **kw})


def event(i: int = 1, **kw: Any) -> Event:
    return Event("memory_written", entry(i, **kw), ("summary", "full"))


def free_udp_port() -> int:
    return free_port(kind=socket.SOCK_DGRAM)


def _id(rec: dict[str, Any]) -> str:
    """The webhook-id in the STRUCTURED-DATA of a message rsyslogd wrote."""
    return parse_5424(rec["raw"].encode()).sd[SD_ID]["id"]


def expected_timestamp(go: str) -> str:
    """The RFC 5424 TIMESTAMP of a Go UTC timestamp, derived from the string itself."""
    m = re.fullmatch(r"(.{19})(?:\.(\d+))?Z", go)
    assert m, go
    return f"{m[1]}.{(m[2] or '').ljust(9, '0')[:6]}Z"


@pytest.fixture
async def transports() -> AsyncIterator[Callable[[SyslogSinkConfig], SyslogTransport]]:
    """Makes opened transports (with a fresh Metrics); closes them all at the end."""
    made: list[SyslogTransport] = []

    def make(c: SyslogSinkConfig) -> SyslogTransport:
        made.append(SyslogTransport(c, Metrics().truncated.labels(c.name)))
        return made[-1]

    yield make
    for t in made:
        await t.close()


@pytest.fixture
async def peer() -> AsyncIterator[SyslogPeer]:
    p = await SyslogPeer().start()
    yield p
    await p.stop()


@pytest.fixture
async def udp_peer() -> AsyncIterator[UdpPeer]:
    p = await UdpPeer().start()
    yield p
    p.stop()


@pytest.fixture
async def rsyslogd(tmp_path: Path) -> AsyncIterator[FieldsRsyslogd]:
    r = FieldsRsyslogd(
        need_tool("rsyslogd", "rsyslog"), tmp_path / "rsyslog", free_port(), free_udp_port()
    )
    await r.start()
    yield r
    await r.stop()


# -- the message -----------------------------------------------------------------------------


def test_a_message_is_rfc5424_with_the_webhook_body_as_msg() -> None:
    t = SyslogTransport(cfg("syslog://127.0.0.1:9", hostname="nexus-1", tag="nx"))
    e = event(7, timestamp="2026-04-10T12:34:56.1234567Z")
    message, head_len = t.format.message(e)
    assert message == (
        b"<134>1 2026-04-10T12:34:56.123456Z nexus-1 nx - memory_written "
        b'[event@32473 id="memory_written:p000007" payload_id="p000007"] ' + e.body("summary")
    )
    assert message[head_len:] == e.body("summary")
    m = parse_5424(message)
    assert (m.facility, m.severity, m.version) == (16, 6, 1)  # local0, informational
    assert json.loads(m.msg) == e.fields()
    assert not m.msg.startswith(b"\xef\xbb\xbf")  # no BOM: MSG is exactly the body


def test_content_full_puts_the_full_body_in_msg() -> None:
    t = SyslogTransport(cfg("syslog+tcp://127.0.0.1:9", content="full"))
    e = event(1, payload={"content": 'naïve "quoted" <tag> & 🐟\n'})
    m = parse_5424(t.format.message(e)[0])
    assert m.msg == e.body("full")
    assert json.loads(m.msg)["content"] == {"content": 'naïve "quoted" <tag> & 🐟\n'}
    assert m.hostname == (HOST if re.fullmatch(r"[!-~]{1,255}", HOST) else "-")


@pytest.mark.parametrize(
    ("facility", "pri"),
    [("kern", 6), ("user", 14), ("daemon", 30), ("local0", 134), ("local7", 190)],
)
def test_pri_is_facility_times_8_plus_informational(facility: str, pri: int) -> None:
    t = SyslogTransport(cfg("syslog://127.0.0.1:9", facility=facility))
    assert parse_5424(t.format.message(event())[0]).pri == pri


@pytest.mark.parametrize(
    ("go", "rfc5424"),
    [
        ("2026-04-10T12:34:56Z", "2026-04-10T12:34:56.000000Z"),
        ("2026-04-10T12:34:56.5Z", "2026-04-10T12:34:56.500000Z"),
        ("2026-04-10T12:34:56.123456Z", "2026-04-10T12:34:56.123456Z"),
        # Cut to microseconds, never rounded up into the next second.
        ("2026-12-31T23:59:59.999999999Z", "2026-12-31T23:59:59.999999Z"),
        ("2026-04-10T14:34:56.000001999+02:00", "2026-04-10T12:34:56.000001Z"),
        ("2026-04-10T00:30:00-05:30", "2026-04-10T06:00:00.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),  # Go's zero time
        ("0001-01-01T00:00:00+01:00", "-"),  # year 0 in UTC: unknown
        ("9999-12-31T23:59:59-01:00", "-"),  # year 10000 in UTC
        ("not a time", "-"),
    ],
)
def test_timestamp_is_the_wal_time_in_utc_with_at_most_6_fraction_digits(
    go: str, rfc5424: str
) -> None:
    e = event(timestamp=go)
    assert rfc5424_timestamp(e.wal_time_ns) == rfc5424
    t = SyslogTransport(cfg("syslog://127.0.0.1:9"))
    assert parse_5424(t.format.message(e)[0]).timestamp == rfc5424


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-04-10T12:34:56Z",
        "2026-04-10T12:34:56.5Z",
        "2026-04-10T12:34:56.123456789Z",
        "2026-04-10T12:34:56.000000999Z",
        *ODD_GO_TIMESTAMPS,
    ],
)
def test_timestamps_of_a_second_already_seen_are_exact(stamp: str) -> None:
    fmt = SyslogTransport(cfg("syslog://127.0.0.1:9")).format
    assert fmt.timestamp("2026-04-10T12:34:56.9Z") == "2026-04-10T12:34:56.900000Z"
    assert fmt._seconds == {"2026-04-10T12:34:56"}  # read exactly once, then from the string
    want = rfc5424_timestamp(parse_go_time_ns(stamp))
    assert fmt.timestamp(stamp) == want
    assert parse_5424(fmt.message(event(timestamp=stamp))[0]).timestamp == want


def test_timestamps_keep_a_bounded_number_of_seconds() -> None:
    fmt = SyslogTransport(cfg("syslog://127.0.0.1:9")).format
    stamps = [f"2026-04-10T12:{m:02d}:{s:02d}.25Z" for m in range(3) for s in range(60)]
    assert [fmt.timestamp(x) for x in stamps] == [x[:19] + ".250000Z" for x in stamps]
    assert len(fmt._seconds) <= SECONDS_KEPT


def test_a_status_event_has_its_type_as_msgid_and_its_status_in_msg() -> None:
    t = SyslogTransport(cfg("syslog://127.0.0.1:9"))
    e = Event("memory_persisted", entry(3, status="DELIVERED"), ("summary",))
    m = parse_5424(t.format.message(e)[0])
    assert m.msgid == "memory_persisted"
    assert m.sd == {SD_ID: {"id": "memory_persisted:p000003", "payload_id": "p000003"}}
    assert json.loads(m.msg)["status"] == "DELIVERED"


def test_payload_id_is_the_bodys() -> None:
    """Usually the tail of the webhook-id, but always the body's: a dead letter comes back
    with its body as it was first sent."""
    fmt = SyslogTransport(cfg("syslog://127.0.0.1:9")).format
    body = json.loads(event_body(entry(1)))

    def sd(webhook_id: str, **changes: Any) -> dict[str, str]:
        doc = {k: v for k, v in {**body, **changes}.items() if v is not ...}
        e = Event.stored("memory_written", webhook_id, "2026-04-10T12:34:56Z", go_json(doc))
        return parse_5424(fmt.message(e)[0]).sd[SD_ID]

    assert sd("memory_written:x1", payload_id="x1") == {
        "id": "memory_written:x1",
        "payload_id": "x1",
    }
    assert sd("memory_written:x1", payload_id="other")["payload_id"] == "other"
    assert sd("memory_written:a<b>&c", payload_id="a<b>&c")["payload_id"] == "a<b>&c"  # Go's \u003c
    assert sd("memory_written:x1", payload_id=7) == {"id": "memory_written:x1"}  # not a string
    assert sd("memory_written:x1", payload_id=...) == {"id": "memory_written:x1"}  # missing


def test_sd_param_values_are_escaped() -> None:
    assert sd_escape('a"b\\c]d[e') == 'a\\"b\\\\c\\]d[e'
    nasty = 'x"]\\y ]"z'
    t = SyslogTransport(cfg("syslog://127.0.0.1:9"))
    m = parse_5424(t.format.message(event(payload_id=nasty))[0])
    assert m.sd == {SD_ID: {"id": f"memory_written:{nasty}", "payload_id": nasty}}


def test_utf8_cut_never_splits_a_character() -> None:
    text = "aé日🐟".encode()  # 1, 2, 3 and 4 bytes
    for limit in range(len(text) + 2):
        cut = utf8_cut(text, limit)
        assert len(cut) <= limit and text.startswith(cut)
        cut.decode()  # a whole number of characters
        assert len(cut) > limit - 4  # backs off at most the 3 bytes of a split character


# -- size limits, framing and connections (transport driven directly) --------------------


async def test_udp_refuse_fails_only_the_oversize_event_and_names_the_sizes(
    udp_peer: UdpPeer, transports: Callable[[SyslogSinkConfig], SyslogTransport]
) -> None:
    t = transports(cfg(udp_peer.url, max_message_bytes=600, content="full"))
    await t.open()
    small, big = event(1), event(2, payload={"content": "x" * 700})
    attempts = await t.send([small, big, small])
    assert [a.outcome for a in attempts] == [
        Outcome.DELIVERED,
        Outcome.PERMANENT,
        Outcome.DELIVERED,
    ]
    size = len(t.format.message(big)[0])
    assert attempts[1].detail == f"message of {size} bytes is over max_message_bytes 600"
    await until(lambda: len(udp_peer.datagrams) == 2)
    assert all(parse_5424(d).msg == small.body("full") for d in udp_peer.datagrams)


async def test_udp_truncate_cuts_on_a_character_boundary_and_counts(
    udp_peer: UdpPeer,
) -> None:
    metrics = Metrics()
    t = SyslogTransport(
        cfg(udp_peer.url, max_message_bytes=500, oversize="truncate", content="full"),
        metrics.truncated.labels("s"),
    )
    await t.open()
    try:
        big = event(1, payload={"content": "日本語" * 200})
        attempts = await t.send([big, event(2)])
    finally:
        await t.close()
    assert [a.outcome for a in attempts] == [Outcome.DELIVERED, Outcome.DELIVERED]
    await until(lambda: len(udp_peer.datagrams) == 2)
    cut = udp_peer.datagrams[0]
    assert 497 < len(cut) <= 500 and t.format.message(big)[0].startswith(cut)
    assert parse_5424(cut).msg.decode().startswith('{"event_type":"memory_written"')
    assert metrics.truncated.labels("s")._value.get() == 1


@pytest.mark.parametrize("framing", ["octet-counting", "lf"])
async def test_tcp_refused_and_truncated_messages_in_a_batch(
    framing: Literal["octet-counting", "lf"],
    transports: Callable[[SyslogSinkConfig], SyslogTransport],
) -> None:
    p = await SyslogPeer(framing=framing).start()
    try:
        small, big = event(1), event(2, payload={"content": "日本語" * 300})
        refuse = transports(cfg(p.url, framing=framing, max_message_bytes=600, content="full"))
        cut = transports(
            cfg(p.url, framing=framing, max_message_bytes=600, content="full", oversize="truncate")
        )
        for t in (refuse, cut):
            await t.open()
        attempts = await refuse.send([small, big, small])
        assert [a.outcome for a in attempts] == [
            Outcome.DELIVERED,
            Outcome.PERMANENT,
            Outcome.DELIVERED,
        ]
        assert {a.outcome for a in await cut.send([big, small, big])} == {Outcome.DELIVERED}
        await until(lambda: len(p.messages) == 5)
        assert not p.errors
        whole, truncated = cut.format.message(small)[0], utf8_cut(cut.format.message(big)[0], 600)
        assert len(truncated) <= 600 and truncated.decode()  # no character split
        by_connection: dict[int, list[bytes]] = {}
        for connection, message in p.messages:
            by_connection.setdefault(connection, []).append(message)
        assert [by_connection[c] for c in sorted(by_connection)] == [
            [whole, whole],  # the refusing sink's connection (the first)
            [truncated, whole, truncated],
        ]
        assert cut._truncated is not None and cut._truncated._value.get() == 2
    finally:
        await p.stop()


async def test_tcp_octet_counting_frames_a_batch_and_keeps_the_connection(
    peer: SyslogPeer, transports: Callable[[SyslogSinkConfig], SyslogTransport]
) -> None:
    t = transports(cfg(peer.url, content="full"))
    await t.open()
    events = [event(i, payload={"content": f'line\nbreak {i} ]"\\'}) for i in range(50)]
    for chunk in (events[:20], events[20:]):
        assert {a.outcome for a in await t.send(chunk)} == {Outcome.DELIVERED}
    await until(lambda: len(peer.messages) == 50)
    assert not peer.errors
    assert [m.msg for m in peer.parsed()] == [e.body("full") for e in events]
    assert peer.connections == 1  # one connection across batches


async def test_lf_framing(
    transports: Callable[[SyslogSinkConfig], SyslogTransport],
) -> None:
    p = await SyslogPeer(framing="lf").start()
    try:
        t = transports(cfg(p.url, framing="lf", content="full"))
        await t.open()
        events = [event(i, payload={"content": "two\nlines"}) for i in range(10)]
        assert {a.outcome for a in await t.send(events)} == {Outcome.DELIVERED}
        await until(lambda: len(p.messages) == 10)
        assert not p.errors
        assert [m.msg for m in p.parsed()] == [e.body("full") for e in events]
        # The JSON body never has a raw LF; an id with one cannot be framed by LF.
        [refused] = await t.send([event(1, payload_id="a\nb")])
        assert refused.outcome is Outcome.PERMANENT and "line feed" in refused.detail
    finally:
        await p.stop()


async def test_concurrent_sends_never_interleave_batches(
    peer: SyslogPeer, transports: Callable[[SyslogSinkConfig], SyslogTransport]
) -> None:
    t = transports(cfg(peer.url, content="full"))
    await t.open()
    batches = [
        [event(b * 1000 + i, payload={"content": "y" * 2000}) for i in range(100)] for b in range(8)
    ]
    results = await asyncio.gather(*(t.send(b) for b in batches))
    assert all(a.outcome is Outcome.DELIVERED for r in results for a in r)
    await until(lambda: len(peer.messages) == 800)
    assert not peer.errors  # every frame whole: no batch cut into another
    assert peer.connections == 1  # no worker replaced the connection another one used
    order = [m.sd[SD_ID]["payload_id"] for m in peer.parsed()]
    runs = [order[i : i + 100] for i in range(0, 800, 100)]
    # Each batch arrived contiguous and in order.
    assert sorted(runs) == sorted([e.id.split(":", 1)[1] for e in b] for b in batches)


async def test_a_collector_that_closed_the_connection_gets_the_next_batch_on_a_new_one(
    peer: SyslogPeer, transports: Callable[[SyslogSinkConfig], SyslogTransport]
) -> None:
    t = transports(cfg(peer.url))
    await t.open()
    assert (await t.send([event(1)]))[0].outcome is Outcome.DELIVERED
    await until(lambda: len(peer.messages) == 1)
    peer.close_connections()  # FIN: the collector restarts, or closes idle connections
    await until(lambda: not t.connected)
    assert (await t.send([event(2)]))[0].outcome is Outcome.DELIVERED
    await until(lambda: len(peer.messages) == 2)
    assert [c for c, _ in peer.messages] == [1, 2]  # not lost into the closed connection


async def test_collector_down_is_a_connection_failure_then_the_next_send_reconnects(
    transports: Callable[[SyslogSinkConfig], SyslogTransport],
) -> None:
    port = free_port()
    t = transports(cfg(f"syslog+tcp://127.0.0.1:{port}"))
    await t.open()  # nothing listens: not an error yet
    attempts = await t.send([event(1), event(2)])
    assert {a.outcome for a in attempts} == {Outcome.CONNECTION}
    p = await SyslogPeer(port=port).start()
    try:
        assert {a.outcome for a in await t.send([event(1), event(2)])} == {Outcome.DELIVERED}
        await until(lambda: len(p.messages) == 2)
    finally:
        await p.stop()


def _big_batch() -> list[Event]:
    """More bytes than the kernel can buffer on both ends (tcp_wmem's max plus a margin)."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    n = (wmem_max + (2 << 20)) // 50_000 + 1
    return [event(i, payload={"content": "z" * 50_000}) for i in range(n)]


async def test_a_collector_that_stops_reading_times_out(
    transports: Callable[[SyslogSinkConfig], SyslogTransport],
) -> None:
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen()  # accepts (in the kernel), never reads
    try:
        port = stuck.getsockname()[1]
        t = transports(
            cfg(
                f"syslog+tcp://127.0.0.1:{port}",
                content="full",
                timeout_seconds=0.5,
                max_message_bytes=65_000,
            )
        )
        await t.open()
        attempts = await t.send(_big_batch())
        assert {a.detail for a in attempts} == {"could not write within 0.5s"}
        assert {a.outcome for a in attempts} == {Outcome.TIMEOUT}
        assert not t.connected  # dropped: it may hold half a batch
    finally:
        stuck.close()


async def test_tls_rfc5425(
    tmp_path: Path, transports: Callable[[SyslogSinkConfig], SyslogTransport]
) -> None:
    cert, key = self_signed(tmp_path)
    other, _ = self_signed(tmp_path, "other")
    p = await SyslogPeer(ssl=server_context(cert, key)).start()
    try:
        t = transports(cfg(p.url, tls={"ca_file": str(cert)}))
        await t.open()
        events = [event(i) for i in range(30)]
        assert {a.outcome for a in await t.send(events)} == {Outcome.DELIVERED}
        await until(lambda: len(p.messages) == 30)
        assert not p.errors
        assert [m.msg for m in p.parsed()] == [e.body("summary") for e in events]
        # A certificate the sink does not trust: refused, as a connection failure.
        wrong = transports(cfg(p.url, tls=TlsConfig(ca_file=other)))
        await wrong.open()
        [failed] = await wrong.send([event(1)])
        assert failed.outcome is Outcome.CONNECTION and "CERTIFICATE_VERIFY_FAILED" in failed.detail
    finally:
        await p.stop()


# -- through the daemon, into rsyslogd --------------------------------------------------------


async def test_every_event_arrives_once_as_rfc5424_over_tcp_lf_and_udp(
    new_daemon: Callable[..., Daemon], rsyslogd: FieldsRsyslogd, receiver: WebhookServer
) -> None:
    sinks = [
        {"name": "hook", "url": receiver.url, "content": "full"},
        {
            "name": "tcp",
            "type": "syslog",
            "url": rsyslogd.tcp_url,
            "tag": "nexus-tcp",
            "facility": "daemon",
            "hostname": "nexus-host-1",
            "content": "full",
        },
        {
            "name": "lf",
            "type": "syslog",
            "url": rsyslogd.tcp_url,
            "tag": "nexus-lf",
            "framing": "lf",
            "content": "full",
        },
        {"name": "udp", "type": "syslog", "url": rsyslogd.udp_url, "tag": "nexus-udp"},
    ]
    d = new_daemon(sinks)
    w = NexusWriter(d.wal)
    w.append(30)
    await d.start()
    w.append(30)
    ids = webhook_ids(w)
    await until(lambda: len(rsyslogd.records()) >= 3 * len(ids))
    await settle(d)
    wal_time = {f"memory_written:{x.payload_id}": x.timestamp for x in w.expected_data()}
    bodies = {r.headers["webhook-id"]: r.body for r in receiver.requests}
    by_app: dict[str, list[dict[str, Any]]] = {}
    for rec in rsyslogd.records():
        by_app.setdefault(rec["app"], []).append(rec)
    host = HOST if re.fullmatch(r"[!-~]{1,255}", HOST) else "-"
    expect = {"nexus-tcp": (30, "nexus-host-1"), "nexus-lf": (134, host), "nexus-udp": (134, host)}
    assert sorted(by_app) == sorted(expect)
    for app, (pri, hostname) in expect.items():
        recs = by_app[app]
        got = Counter(parse_5424(r["raw"].encode()).sd[SD_ID]["id"] for r in recs)
        assert got == Counter(ids), f"{app}: not every event exactly once"
        for rec in recs:
            assert rec["version"] == "1", rec  # rsyslog parsed it as RFC 5424 too
            m = parse_5424(rec["raw"].encode())
            webhook_id = m.sd[SD_ID]["id"]
            assert (m.pri, m.hostname, m.app_name, m.procid, m.msgid) == (
                pri,
                hostname,
                app,
                "-",
                "memory_written",
            )
            assert m.timestamp == expected_timestamp(wal_time[webhook_id])
            assert m.sd[SD_ID]["payload_id"] == webhook_id.removeprefix("memory_written:")
            assert (rec["msgid"], rec["sd"], rec["msg"].encode()) == (
                m.msgid,
                f'[{SD_ID} id="{webhook_id}" payload_id="{webhook_id.split(":", 1)[1]}"]',
                m.msg,
            )
            body = json.loads(m.msg)
            if app == "nexus-udp":  # content: summary, the webhook sink has full
                assert body == {k: v for k, v in json.loads(bodies[webhook_id]).items()
                                if k != "content"}  # fmt: skip
            else:
                assert m.msg == bodies[webhook_id]  # byte for byte what the webhook got
    for sink in ("tcp", "lf", "udp"):
        assert await accounting(d, sink) == (len(ids), 0, 0)


async def test_collector_down_pauses_the_sink_and_back_resumes_losing_nothing(
    new_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    r = FieldsRsyslogd(
        need_tool("rsyslogd", "rsyslog"), tmp_path / "rsyslog", free_port(), free_udp_port()
    )
    sink = {"name": "s", "type": "syslog", "url": r.tcp_url, "max_retries": 1}
    d = new_daemon([sink], overflow="block", pause_after_failures=3)
    w = NexusWriter(d.wal)
    try:
        await r.start()
        w.append(20)
        await d.start()
        await until(lambda: len(r.records()) == 20)
        await r.stop()  # closes the connection the sink keeps
        w.append(30)
        await until_status(d, lambda s: s["sinks"]["s"]["state"] == "paused", what="sink paused")
        await r.start()  # same port
        ids = webhook_ids(w)
        await until(lambda: set(ids) <= {_id(x) for x in r.records()}, timeout_s=60)
        await until_status(d, lambda s: s["sinks"]["s"]["state"] == "running", what="sink resumed")
        await settle(d)
        assert await accounting(d, "s") == (50, 0, 0)
        text = await d.get("/metrics")
        assert metric_value(text, "eventsinkd_delivery_attempts_total", sink="s",
                            outcome="connection_error") >= 3  # fmt: skip
    finally:
        await r.stop()


async def test_a_connection_reset_mid_batch_sends_the_whole_batch_again(
    new_daemon: Callable[..., Daemon],
) -> None:
    # The first connection reads 1,000 bytes and resets. The batch is bigger than what the
    # kernel can buffer (see _big_batch), so it cannot have counted as written: it fails as
    # a whole and goes again on a new connection.
    p = await SyslogPeer(reset_after=1000, rcvbuf=4096).start()
    try:
        n = len(_big_batch())
        sink = {
            "name": "s",
            "type": "syslog",
            "url": p.url,
            "content": "full",
            "max_message_bytes": 65_000,
            "max_batch": n,
            "linger_ms": 1000,
            "concurrency": 1,
        }
        d = new_daemon([sink], overflow="block")
        w = NexusWriter(d.wal, payload_bytes=48_000, max_segment_bytes=1 << 20)
        w.append(n)  # all written before the daemon starts: one batch
        await d.start()
        ids = webhook_ids(w)
        await until(lambda: set(ids) <= {m.sd[SD_ID]["id"] for m in p.parsed()}, timeout_s=60)
        await settle(d)
        assert not p.errors
        assert p.connections == 2
        assert await accounting(d, "s") == (n, 0, 0)
        failed = await until_metric(
            d, "eventsinkd_delivery_attempts_total", 1, sink="s", outcome="connection_error"
        )
        assert failed == n  # the whole batch failed once, every event of it
    finally:
        await p.stop()


async def test_udp_oversize_refused_is_a_dead_letter_truncated_is_counted(
    new_daemon: Callable[..., Daemon], rsyslogd: FieldsRsyslogd
) -> None:
    base = {"type": "syslog", "url": rsyslogd.udp_url, "content": "full", "max_message_bytes": 480}
    sinks = [
        {**base, "name": "refuse", "tag": "refuse"},
        {**base, "name": "cut", "tag": "cut", "oversize": "truncate"},
    ]
    d = new_daemon(sinks)
    w = NexusWriter(d.wal)  # content: full bodies are ~1.5 KB
    w.append(10)
    await d.start()
    ids = webhook_ids(w)
    await until(lambda: len(rsyslogd.records()) == len(ids))
    await settle(d)
    assert await accounting(d, "refuse") == (0, len(ids), 0)
    assert await accounting(d, "cut") == (len(ids), 0, 0)
    text = await d.get("/metrics")
    assert metric_value(text, "eventsinkd_messages_truncated_total", sink="cut") == len(ids)
    assert metric_value(text, "eventsinkd_messages_truncated_total", sink="refuse") == 0
    recs = rsyslogd.records()
    assert {r["app"] for r in recs} == {"cut"}
    assert sorted(_id(r) for r in recs) == sorted(ids)
    assert all(len(r["raw"].encode()) <= 480 and r["version"] == "1" for r in recs)
    res = await eventsinkd("dead-letters", "list", "-c", d.config, "--sink", "refuse", "--json")
    assert res.returncode == 0, res.stderr
    letters = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(x["webhook_id"] for x in letters) == sorted(ids)
    assert all(
        re.fullmatch(r"message of \d{4} bytes is over max_message_bytes 480", x["last_outcome"])
        for x in letters
    ), letters[0]["last_outcome"]
