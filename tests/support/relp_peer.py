"""A RELP server for tests, written from the specification independently of the client.

rsyslogd's imrelp is the real receiver in the tests; this peer does what imrelp cannot be
made to do: answer ``500`` to chosen messages, hold its answers (to watch the client's
window), reset a session after reading part of a stream, and accept the TXNR wrap from
999,999,999 to 1 that the specification describes (librelp counts on to 1,000,000,000).
It checks every frame strictly and records any violation in :attr:`RelpPeer.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

OK = b"200 OK"
OPEN_OK = b"200 OK\nrelp_version=0\nrelp_software=relp_peer,1,test\ncommands=syslog"


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, str, bytes] | None:
    """``TXNR SP COMMAND SP DATALEN [SP DATA] LF``; None at a clean EOF between frames."""
    try:
        txnr = await reader.readuntil(b" ")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    command = await reader.readuntil(b" ")
    assert re.fullmatch(rb"[1-9]\d{0,8} |0 ", txnr), f"bad TXNR {txnr!r}"
    assert re.fullmatch(rb"[A-Za-z]{1,32} ", command), f"bad COMMAND {command!r}"
    digits = b""
    while (c := await reader.readexactly(1)).isdigit():
        digits += c
    assert re.fullmatch(rb"0|[1-9]\d{0,8}", digits), f"bad DATALEN {digits!r}"
    length = int(digits)
    if length == 0:
        assert c == b"\n", f"DATALEN 0 followed by {c!r}"
        return int(txnr), command[:-1].decode(), b""
    assert c == b" ", f"DATALEN followed by {c!r}"
    data = await reader.readexactly(length)
    assert await reader.readexactly(1) == b"\n", "no LF trailer"
    return int(txnr), command[:-1].decode(), data


def spec_next_txnr(txnr: int) -> int:
    return 1 if txnr == 999_999_999 else txnr + 1


@dataclass
class RelpPeer:
    answer: Callable[[bytes], bytes] = lambda message: OK
    reset_after: int | None = None  # first session: reset after this many syslog frames
    messages: list[tuple[int, int, bytes]] = field(default_factory=list)  # session, txnr, msg
    errors: list[str] = field(default_factory=list)
    sessions: int = 0
    closes: int = 0  # sessions the client ended with close
    skip_to: int | None = None  # the next TXNR expected, set with the client's
    delay_s: float = 0.0  # a slow server: this long for each message, before it reads on
    port: int = 0
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # answers wait while clear
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.hold.set()

    @property
    def url(self) -> str:
        return f"syslog+relp://127.0.0.1:{self.port}"

    async def start(self) -> RelpPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def payloads(self) -> list[bytes]:
        return [m for _, _, m in self.messages]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.sessions += 1
        session, expect, received = self.sessions, 1, 0
        opened = False
        backlog: list[bytes] = []  # answers held back
        releasing: asyncio.Task[None] | None = None
        try:
            while (frame := await read_frame(reader)) is not None:
                txnr, command, data = frame
                if self.skip_to is not None and opened:  # the test moved the client on
                    expect, self.skip_to = self.skip_to, None
                assert txnr == expect, f"session {session}: TXNR {txnr}, expected {expect}"
                if not opened:
                    if not session_opening(command, data, self.errors):
                        return
                    writer.write(b"1 rsp %d %b\n" % (len(OPEN_OK), OPEN_OK))
                    opened, expect = True, 2
                    continue
                expect = spec_next_txnr(expect)
                if command == "close":
                    self.closes += 1
                    writer.write(b"%d rsp 0\n0 serverclose 0\n" % txnr)
                    await writer.drain()
                    return
                assert command == "syslog", f"unexpected command {command}"
                self.messages.append((session, txnr, data))
                received += 1
                if session == 1 and received == self.reset_after:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()  # an RST, nothing answered
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                rsp = self.answer(data)
                backlog.append(b"%d rsp %d %b\n" % (txnr, len(rsp), rsp))
                if self.hold.is_set():
                    writer.write(b"".join(backlog))
                    backlog.clear()
                elif releasing is None:  # answer once released, reading on meanwhile
                    releasing = asyncio.create_task(self._release(writer, backlog))
                    self._handlers.add(releasing)
        except AssertionError as exc:
            self.errors.append(str(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()
            self._handlers.discard(task)

    async def _release(self, writer: asyncio.StreamWriter, backlog: list[bytes]) -> None:
        await self.hold.wait()
        writer.write(b"".join(backlog))
        backlog.clear()


def session_opening(command: str, data: bytes, errors: list[str]) -> bool:
    """Checks the ``open`` that must start a session."""
    if command != "open":
        errors.append(f"a session started with {command}, not open")
        return False
    offers = dict(line.split(b"=", 1) for line in data.split(b"\n"))
    with contextlib.suppress(KeyError):
        if offers[b"relp_version"] == b"0" and b"syslog" in offers[b"commands"].split(b","):
            return True
    errors.append(f"bad offers {data!r}")
    return False
