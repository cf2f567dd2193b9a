"""``syslog+relp://``: RFC 5424 messages over RELP, delivered once rsyslog answered them.

Framing, sessions and delivery are checked against a real rsyslogd with imrelp (Debian's
rsyslog-relp); what imrelp cannot be made to do (answer 500, hold its answers, reset a
session mid-stream, take a TXNR past 999,999,999) against tests/support/relp_peer.py, a RELP server
written from the specification. Through the real daemon: every event into rsyslogd's file,
and kill -9 of rsyslogd twice during a live stream losing nothing.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import need_tool, self_signed
from daemon_harness import Daemon, accounting, settle, until, webhook_ids
from engine_harness import entry
from pydantic import ValidationError
from relp_peer import OK, RelpPeer

from eventsinkd.common.ports import free_port
from eventsinkd.config.sinks import SyslogSinkConfig
from eventsinkd.devtools.peers.rsyslogd import FieldsRsyslogd
from eventsinkd.devtools.peers.syslog import parse_5424
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.events import Event
from eventsinkd.metrics import Metrics
from eventsinkd.transports import make_transport
from eventsinkd.transports.contract import Outcome
from eventsinkd.transports.relp_frames import (
    MAX_TXNR,
    Frame,
    FrameParser,
    RelpError,
    encode_frame,
    next_txnr,
)
from eventsinkd.transports.syslog import SD_ID
from eventsinkd.transports.syslog_relp import RelpSyslogTransport


def cfg(url: str, **kw: Any) -> SyslogSinkConfig:
    return SyslogSinkConfig.model_validate({"type": "syslog", "name": "s", "url": url, **kw})


def event(i: int, **kw: Any) -> Event:
    return Event("memory_written", entry(i, **kw), ("summary", "full"))


def need_imrelp() -> None:
    """imrelp is Debian's rsyslog-relp: on CI a failure without it, elsewhere a skip."""
    if not glob.glob("/usr/lib/*/rsyslog/imrelp.so"):
        why = "rsyslog's imrelp is missing (Debian package rsyslog-relp)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: .ci/run should have installed it")
        pytest.skip(f"{why}; .ci/run installs it on CI")


def relp_rsyslogd(root: Path, tls: tuple[Path, Path] | None = None) -> FieldsRsyslogd:
    exe = need_tool("rsyslogd", "rsyslog")
    need_imrelp()
    udp = free_port(kind=socket.SOCK_DGRAM)
    return FieldsRsyslogd(exe, root, free_port(), udp, relp_port=free_port(), relp_tls=tls)


def relp_url(r: FieldsRsyslogd) -> str:
    return f"syslog+relp://127.0.0.1:{r.relp_port}"


def ids_in(records: list[dict[str, Any]]) -> list[str]:
    return [parse_5424(rec["raw"].encode()).sd[SD_ID]["id"] for rec in records]


@pytest.fixture
async def rsyslogd(tmp_path: Path) -> AsyncIterator[FieldsRsyslogd]:
    r = relp_rsyslogd(tmp_path / "rsyslog")
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def transports() -> AsyncIterator[Callable[[SyslogSinkConfig], RelpSyslogTransport]]:
    made: list[RelpSyslogTransport] = []

    def make(c: SyslogSinkConfig) -> RelpSyslogTransport:
        t = make_transport(c, Metrics())
        assert isinstance(t, RelpSyslogTransport)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.close()


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"url": "syslog+relp://logs.internal"}, "needs a port"),
        ({"url": "syslog+relp://h:2514", "tls": {"verify": False}}, r"use syslog\+relp\+tls"),
        ({"url": "syslog+relp+tls://h"}, "needs a port"),
        ({"url": "syslog+relp://h:2514", "framing": "lf"}, "framing does not apply"),
        ({"url": "syslog+tcp://h:514", "relp_window": 8}, r"relp_window is for syslog\+relp"),
        ({"url": "syslog+relp://h:2514", "relp_window": 0}, "greater than or equal to 1"),
    ],
)
def test_config_refuses_what_relp_cannot_do(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SyslogSinkConfig.model_validate({"type": "syslog", "name": "s", **kw})


def test_config_defaults() -> None:
    c = cfg("syslog+relp://logs.internal:2514")
    assert (c.endpoint.port, c.relp_window) == (2514, 128)


# -- frames ----------------------------------------------------------------------------------


def test_frames_as_the_specification_writes_them() -> None:
    assert encode_frame(7, b"syslog", b"<134>1 x") == b"7 syslog 8 <134>1 x\n"
    assert encode_frame(3, b"close") == b"3 close 0\n"  # DATALEN 0: no SP, no DATA
    assert [next_txnr(1), next_txnr(MAX_TXNR - 1), next_txnr(MAX_TXNR)] == [2, MAX_TXNR, 1]


def test_the_parser_takes_frames_split_anywhere() -> None:
    stream = b"2 rsp 6 200 OK\n0 serverclose 0\n12 rsp 11 500 no\nroom\n3 rsp 0\n"
    for step in (1, 2, 5, len(stream)):
        parser, got = FrameParser(), []
        for i in range(0, len(stream), step):
            got += parser.feed(stream[i : i + step])
        assert got == [
            Frame(2, "rsp", b"200 OK"),
            Frame(0, "serverclose", b""),
            Frame(12, "rsp", b"500 no\nroom"),
            Frame(3, "rsp", b""),
        ]


@pytest.mark.parametrize(
    "junk",
    [b"HTTP/1.1 400 Bad\r\n", b"1234567890 rsp 0\n", b"2 rsp 6 200 OK!", b"2 rsp 3\n", b"x"],
)
def test_the_parser_refuses_what_is_not_relp(junk: bytes) -> None:
    with pytest.raises(RelpError):
        FrameParser().feed(junk)


# -- the transport, against rsyslogd -----------------------------------------------------------


async def test_every_message_is_answered_and_written_once_by_rsyslogd(
    rsyslogd: FieldsRsyslogd, transports: Callable[[SyslogSinkConfig], RelpSyslogTransport]
) -> None:
    t = transports(cfg(relp_url(rsyslogd), relp_window=16, content="full"))
    events = [event(i) for i in range(1, 301)]
    for batch in (events[:100], events[100:]):  # two sends, one session
        attempts = await t.send(batch)
        assert attempts == [(Outcome.DELIVERED, None, "acked")] * len(batch)
    assert t.client.sessions == 1
    recs = rsyslogd.relp_records()  # answered = written (the ruleset's queue is Direct)
    assert ids_in(recs) == [e.id for e in events]  # in order, each once
    for rec, e in zip(recs, events, strict=True):
        assert rec["raw"].encode() == t.format.message(e)[0]  # byte for byte: framing intact
        assert rec["version"] == "1" and rec["input"] == "imrelp"


async def test_a_restarted_rsyslogd_gets_a_new_session(
    rsyslogd: FieldsRsyslogd, transports: Callable[[SyslogSinkConfig], RelpSyslogTransport]
) -> None:
    t = transports(cfg(relp_url(rsyslogd), timeout_seconds=2))
    assert {a.outcome for a in await t.send([event(1)])} == {Outcome.DELIVERED}
    await rsyslogd.stop()  # SIGTERM: rsyslogd sends serverclose
    attempts = await t.send([event(2)])
    assert attempts[0].outcome is Outcome.CONNECTION, attempts
    await rsyslogd.start()
    assert {a.outcome for a in await t.send([event(3)])} == {Outcome.DELIVERED}
    assert t.client.sessions == 2
    assert ids_in(rsyslogd.relp_records()) == [event(1).id, event(3).id]


async def test_relp_over_tls_with_a_client_certificate(
    tmp_path: Path, transports: Callable[[SyslogSinkConfig], RelpSyslogTransport]
) -> None:
    cert, key = self_signed(tmp_path)
    r = relp_rsyslogd(tmp_path / "rsyslog", tls=(cert, key))
    await r.start()
    try:
        url = f"syslog+relp+tls://127.0.0.1:{r.relp_port}"
        mine = {"ca_file": str(cert), "cert_file": str(cert), "key_file": str(key)}
        t = transports(cfg(url, tls=mine))
        await t.open()
        events = [event(i) for i in range(1, 51)]
        assert {a.outcome for a in await t.send(events)} == {Outcome.DELIVERED}
        assert ids_in(r.relp_records()) == [e.id for e in events]
        stranger = transports(cfg(url, tls={"ca_file": str(cert)}, timeout_seconds=1))
        await stranger.open()  # no client certificate: imrelp (certvalid) refuses it
        attempts = await stranger.send([event(51)])
        assert attempts[0].outcome is Outcome.CONNECTION, attempts
        assert len(r.relp_records()) == len(events)
    finally:
        await r.stop()


# -- the transport, against the RELP peer ------------------------------------------------------


@pytest.fixture
async def peers() -> AsyncIterator[Callable[..., RelpPeer]]:
    made: list[RelpPeer] = []

    def make(**kw: Any) -> RelpPeer:
        made.append(RelpPeer(**kw))
        return made[-1]

    yield make
    for p in made:
        await p.stop()


async def test_a_500_answer_fails_that_event_alone(
    peers: Callable[..., RelpPeer],
    transports: Callable[[SyslogSinkConfig], RelpSyslogTransport],
) -> None:
    refused = event(3).id.encode()
    p = await peers(answer=lambda m: b"500 queue full" if refused in m else OK).start()
    t = transports(cfg(p.url))
    attempts = await t.send([event(i) for i in range(1, 6)])
    outcomes = [a.outcome for a in attempts]
    assert outcomes == [Outcome.DELIVERED] * 2 + [Outcome.RETRY_STATUS] + [Outcome.DELIVERED] * 2
    assert attempts[2].detail == "rsyslog answered '500 queue full'"
    assert not p.errors


async def test_no_more_than_the_window_is_unanswered(
    peers: Callable[..., RelpPeer],
    transports: Callable[[SyslogSinkConfig], RelpSyslogTransport],
) -> None:
    p = await peers().start()
    p.hold.clear()
    t = transports(cfg(p.url, relp_window=5, timeout_seconds=30))
    sending = asyncio.create_task(t.send([event(i) for i in range(1, 21)]))
    await until(lambda: len(p.messages) >= 5)
    await asyncio.sleep(0.5)  # room for a 6th, if the client sent one
    assert len(p.messages) == 5
    p.hold.set()
    attempts = await sending
    assert {a.outcome for a in attempts} == {Outcome.DELIVERED}
    assert [txnr for _, txnr, _ in p.messages] == list(range(2, 22))  # open was 1
    assert not p.errors


async def test_unanswered_messages_go_again_on_a_new_session_after_a_reset(
    peers: Callable[..., RelpPeer],
    transports: Callable[[SyslogSinkConfig], RelpSyslogTransport],
) -> None:
    p = await peers(reset_after=7).start()
    p.hold.clear()  # session 1 answers nothing before its reset
    t = transports(cfg(p.url, relp_window=10, timeout_seconds=30))
    events = [event(i) for i in range(1, 31)]
    sending = asyncio.create_task(t.send(events))
    await until(lambda: p.sessions == 2)
    p.hold.set()
    attempts = await sending
    assert {a.outcome for a in attempts} == {Outcome.DELIVERED}
    by_session = Counter(s for s, _, _ in p.messages)
    assert by_session == {1: 7, 2: 30}  # the 7 unanswered ones went again, then the rest
    second = [m for s, _, m in p.messages if s == 2]
    assert second == [t.format.message(e)[0] for e in events]  # in order, nothing skipped
    assert t.client.resent >= 7
    assert not p.errors


async def test_txnr_wraps_from_999999999_to_1(
    peers: Callable[..., RelpPeer],
    transports: Callable[[SyslogSinkConfig], RelpSyslogTransport],
) -> None:
    p = await peers().start()
    t = transports(cfg(p.url))
    assert {a.outcome for a in await t.send([event(1)])} == {Outcome.DELIVERED}
    session = t.client._session  # a billion messages would take too long: jump ahead
    assert session is not None
    session.txnr = p.skip_to = MAX_TXNR - 1
    assert {a.outcome for a in await t.send([event(i) for i in range(2, 6)])} == {Outcome.DELIVERED}
    assert [txnr for _, txnr, _ in p.messages] == [2, MAX_TXNR - 1, MAX_TXNR, 1, 2]
    assert not p.errors  # the peer checks the sequence as the specification has it
    await t.close()
    assert p.closes == 1  # ended with the close command


async def test_a_peer_that_never_answers_times_out_and_the_session_is_replaced(
    peers: Callable[..., RelpPeer],
    transports: Callable[[SyslogSinkConfig], RelpSyslogTransport],
) -> None:
    p = await peers().start()
    p.hold.clear()
    t = transports(cfg(p.url, timeout_seconds=1.5))
    attempts = await t.send([event(1), event(2)])
    assert [a.outcome for a in attempts] == [Outcome.TIMEOUT] * 2
    assert attempts[0].detail == "no answer from rsyslog within 1.5s"
    p.hold.set()
    assert {a.outcome for a in await t.send([event(3)])} == {Outcome.DELIVERED}
    assert p.sessions == 2  # the stuck session was dropped, its timed-out messages not resent
    assert [m for s, _, m in p.messages if s == 2] == [t.format.message(event(3))[0]]


async def test_a_slow_peer_that_keeps_answering_is_waited_for(
    peers: Callable[..., RelpPeer],
    transports: Callable[[SyslogSinkConfig], RelpSyslogTransport],
) -> None:
    p = await peers(delay_s=0.1).start()  # 30 messages: 3 s, twice the timeout
    t = transports(cfg(p.url, timeout_seconds=1.5))
    attempts = await t.send([event(i) for i in range(1, 31)])
    assert {a.outcome for a in attempts} == {Outcome.DELIVERED}
    assert (p.sessions, len(p.messages)) == (1, 30)  # no session dropped, nothing twice


async def test_nothing_listening_is_a_connection_failure(
    transports: Callable[[SyslogSinkConfig], RelpSyslogTransport],
) -> None:
    t = transports(cfg(f"syslog+relp://127.0.0.1:{free_port()}", timeout_seconds=1))
    attempts = await t.send([event(1)])
    assert attempts[0].outcome is Outcome.CONNECTION
    assert "Connect call failed" in attempts[0].detail, attempts[0].detail


# -- through the daemon ------------------------------------------------------------------------


async def test_every_event_arrives_in_rsyslogd_over_relp(
    new_daemon: Callable[..., Daemon], rsyslogd: FieldsRsyslogd
) -> None:
    sink = {"name": "relp", "type": "syslog", "url": relp_url(rsyslogd), "tag": "nexus-relp"}
    d = new_daemon([sink])
    w = NexusWriter(d.wal)
    w.append(1000)
    await d.start()
    w.append(1000)
    ids = webhook_ids(w)
    await until(lambda: len(rsyslogd.relp_records()) >= len(ids))
    await settle(d)
    recs = rsyslogd.relp_records()
    assert Counter(ids_in(recs)) == Counter(ids)  # no fault: each exactly once
    assert {r["app"] for r in recs} == {"nexus-relp"}
    assert await accounting(d, "relp") == (len(ids), 0, 0)


def unread_bytes(port: int) -> int:
    """Bytes the kernel holds for rsyslogd on its RELP connections, not read by it yet
    (/proc/net/tcp's rx_queue of the established sockets on ``port``)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01":
            total += int(fields[4].split(":")[1], 16)
    return total


async def kill_with_messages_in_flight(r: FieldsRsyslogd) -> None:
    """SIGSTOP rsyslogd, wait until messages reach it that it will never read (the stream
    keeps the sink sending), then kill -9: some messages are certainly written and not
    answered when it dies, maybe others handled and not answered."""
    assert r.proc is not None and r.relp_port is not None
    r.proc.send_signal(signal.SIGSTOP)
    await until(lambda: unread_bytes(r.relp_port) > 0, timeout_s=30)
    await r.kill()


async def test_kill_9_of_rsyslogd_twice_mid_stream_loses_nothing(
    new_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    r = relp_rsyslogd(tmp_path / "rsyslog")
    assert r.relp_port is not None
    streaming = True

    async def stream() -> None:  # 2,000 events a second until both kills are done
        for _ in range(500):  # at most 20,000
            if not streaming:
                return
            w.append(40)
            await asyncio.sleep(0.02)

    try:
        await r.start()  # before the daemon takes a port for itself: rsyslogd holds its own
        sink = {"name": "s", "type": "syslog", "url": relp_url(r), "max_retries": 50}
        d = new_daemon([sink], overflow="block")
        w = NexusWriter(d.wal)
        w.append(1000)
        await d.start()
        writing = asyncio.create_task(stream())
        for at in (1000, 2500):
            await until(lambda at=at: len(r.relp_records()) >= at, timeout_s=60)
            assert not writing.done(), "the stream ended before the kill: not mid-stream"
            await kill_with_messages_in_flight(r)
            await asyncio.sleep(0.3)
            await r.start()  # same port
        await asyncio.sleep(0.5)  # the stream goes on a little after the second restart
        streaming = False
        await writing
        ids = webhook_ids(w)
        await until(lambda: set(ids) <= set(ids_in(r.relp_records())), timeout_s=90)
        await settle(d)
        got = Counter(ids_in(r.relp_records()))
        duplicates = sum(n - 1 for n in got.values())
        resent = [
            int(n) for n in re.findall(r"(\d+) unanswered messages go again", d.log.read_text())
        ]
        print(
            f"RELP, kill -9 of rsyslogd twice: {len(ids)} events, {sum(got.values())} lines "
            f"in rsyslog's file, 0 lost, {duplicates} duplicates; unanswered messages sent "
            f"again after each kill: {resent}"
        )
        assert set(got) == set(ids)
        assert len(resent) == 2  # both kills caught messages in flight; they went again
        assert await accounting(d, "s") == (len(ids), 0, 0)
    finally:
        await r.stop()
