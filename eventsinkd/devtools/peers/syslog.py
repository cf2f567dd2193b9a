"""Syslog receivers for tests: a small RFC 6587 TCP/TLS peer, a UDP peer, and a strict
RFC 5424 parser (a real rsyslogd: :mod:`eventsinkd.devtools.peers.rsyslogd`).

- :class:`SyslogPeer` is a TCP (or TLS) receiver that follows RFC 6587 (octet counting, or LF
  framing) and can reset a connection (SO_LINGER 0) after reading part of a stream - rsyslog
  cannot be made to do that.
- :class:`UdpPeer` keeps every datagram it gets.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

# -- RFC 5424, strictly -------------------------------------------------------------------

_HEADER = re.compile(
    rb"<(?P<pri>0|[1-9]\d{0,2})>(?P<version>[1-9]\d{0,2}) "
    rb"(?P<timestamp>-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) "
)
_SD_NAME = rb"[!#-<>-\\^-~]{1,32}"  # PRINTUSASCII except '=', SP, ']' and '"'
_SD_PARAM = rb" (" + _SD_NAME + rb')="((?:[^"\\\]]|\\["\\\]])*)"'  # only \" \\ \] escapes
_SD_ELEMENT = re.compile(rb"\[(" + _SD_NAME + rb")((?:" + _SD_PARAM + rb")*)\]")
_PARAM = re.compile(_SD_PARAM)
_UNESCAPE = re.compile(r'\\(["\\\]])')


@dataclass
class Syslog5424:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]  # SD-ID -> params (unescaped)
    msg: bytes

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8


def parse_5424(raw: bytes) -> Syslog5424:
    """Parse one RFC 5424 message; AssertionError naming what is wrong if it is not one."""
    m = _HEADER.match(raw)
    assert m, f"not an RFC 5424 header: {raw[:200]!r}"
    assert int(m["pri"]) <= 191, raw[:20]
    ts = m["timestamp"].decode()
    if ts != "-":
        datetime.fromisoformat(ts.replace("Z", "+00:00"))  # a real date and time
    pos = m.end()
    sd: dict[str, dict[str, str]] = {}
    if raw[pos : pos + 1] == b"-":
        pos += 1
    else:
        while (el := _SD_ELEMENT.match(raw, pos)) is not None:
            params = {
                name.decode(): _UNESCAPE.sub(r"\1", value.decode("utf-8"))
                for name, value in _PARAM.findall(el[2])
            }
            assert el[1].decode() not in sd, f"SD-ID repeated: {raw[:200]!r}"
            sd[el[1].decode()] = params
            pos = el.end()
        assert sd, f"no STRUCTURED-DATA: {raw[:200]!r}"
    rest = raw[pos:]
    assert rest == b"" or rest.startswith(b" "), f"junk after STRUCTURED-DATA: {rest[:50]!r}"
    return Syslog5424(
        pri=int(m["pri"]),
        version=int(m["version"]),
        timestamp=ts,
        hostname=m["hostname"].decode(),
        app_name=m["app"].decode(),
        procid=m["procid"].decode(),
        msgid=m["msgid"].decode(),
        sd=sd,
        msg=rest[1:],
    )


# -- an RFC 6587 peer ---------------------------------------------------------------------


@dataclass
class SyslogPeer:
    """TCP/TLS syslog receiver on 127.0.0.1: octet-counting or LF framing, strict.

    ``reset_after``: on the first connection, read at least this many bytes, then reset it
    (SO_LINGER 0, so the sender gets an RST). ``rcvbuf`` makes the listening socket's
    receive buffer small, so a sender cannot park much data in this side's kernel.
    """

    framing: Literal["octet-counting", "lf"] = "octet-counting"
    ssl: ssl.SSLContext | None = None
    reset_after: int | None = None
    rcvbuf: int | None = None
    messages: list[tuple[int, bytes]] = field(default_factory=list)  # (connection no, msg)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"syslog+{'tls' if self.ssl else 'tcp'}://127.0.0.1:{self.port}"

    async def start(self) -> SyslogPeer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf is not None:  # before listen(): accepted sockets inherit it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", self.port))
        self._server = await asyncio.start_server(self._serve, sock=sock, ssl=self.ssl)
        self.port = sock.getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.transport.abort()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def close_connections(self) -> None:
        """Close every open connection gracefully (FIN), as a collector restarting does."""
        for w in self._writers:
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(writer)
        self.connections += 1
        conn = self.connections
        try:
            if conn == 1 and self.reset_after is not None:
                await reader.readexactly(self.reset_after)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # closes with SO_LINGER 0: an RST
                return
            while True:
                msg = await self._read_one(reader)
                if msg is None:
                    return
                self.messages.append((conn, msg))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError) or exc.partial:
                self.errors.append(f"connection {conn}: {exc!r}")
        finally:
            writer.close()
            self._handlers.discard(task)

    async def _read_one(self, reader: asyncio.StreamReader) -> bytes | None:
        if self.framing == "lf":
            line = await reader.readline()
            if not line:
                return None
            if not line.endswith(b"\n"):
                self.errors.append(f"unterminated last line: {line[:80]!r}")
                return None
            return line[:-1]
        head = await reader.readuntil(b" ")
        if not re.fullmatch(rb"[1-9]\d{0,8} ", head):
            self.errors.append(f"bad MSG-LEN {head[:20]!r}")
            return None
        return await reader.readexactly(int(head))

    def parsed(self) -> list[Syslog5424]:
        return [parse_5424(m) for _, m in self.messages]


class UdpPeer(asyncio.DatagramProtocol):
    """Keeps every datagram that arrives on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> UdpPeer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    @property
    def url(self) -> str:
        return f"syslog://127.0.0.1:{self.port}"

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.datagrams.append(data)

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


# -- TLS -------------------------------------------------------------------------------------


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
