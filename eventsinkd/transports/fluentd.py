"""``type: fluentd``: Fluentd's Forward protocol v1 over TCP or TLS, with acknowledgements.

One :meth:`FluentdTransport.send` is one Forward-mode message
(https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1)::

    [tag, [[EventTime, record], ...], {"chunk": <base64 of 16 random bytes>, "size": n}]

``record`` is the map of the JSON body a webhook receiver gets for the same event (same keys,
same order), and ``EventTime`` (msgpack ext type 0: big-endian uint32 seconds, uint32
nanoseconds) is the WAL append time. The batch counts as delivered only when the collector
answers ``{"ack": <chunk>}`` - the ``in_forward`` of Fluentd and Fluent Bit do so once they
have taken the events in (handed them to their buffers). No ack within ``timeout_seconds``
is a TIMEOUT; any connection trouble (refused, reset, closed before the ack, TLS failure, an
answer that is not our ack) is CONNECTION. The sink retries both as a new message with a new
chunk id, so a collector that got the first copy but whose ack was lost sees the events
twice (at-least-once). The one failure retried at once, inside the same send, is a kept
connection found closed by the collector before it answered anything
(see :meth:`FluentdTransport._exchange`).

Connections: a small pool, one connection per batch in flight, so at most ``max_requests``
connections (the pinned ``concurrency``, or ``max_concurrency`` under ``auto``: the sink
never has more batches in flight). Each connection carries one request and its ack at a
time, which keeps the acks unambiguous without any bookkeeping: a connection that failed or
timed out is closed, never reused, so an ack arriving late for a chunk given up on has
nowhere to land (and any ack that does not name the chunk being waited for is refused
anyway). Multiplexing several chunks on one connection would instead put every batch behind
the slowest one - ``in_forward`` answers the messages of one connection in order - and a
single timeout would have to throw all of them away. Idle connections are kept for the next
batch (up to :data:`IDLE_KEEP_S`) and reopened lazily after an error; the first send
connects.

Not supported: the ``shared_key``/user authentication handshake (HELO/PING/PONG). A collector
that asks for it (it greets with HELO) gets a CONNECTION failure saying so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import struct
import time
from collections.abc import Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]  # ships no type information
import orjson

from eventsinkd.config.sinks import FluentdSinkConfig
from eventsinkd.events import ContentMode, Event
from eventsinkd.transports.contract import Attempt, Outcome, all_failed
from eventsinkd.transports.tls import ssl_context

EVENT_TIME_EXT = 0  # Forward protocol v1: EventTime is msgpack ext type 0 (fixext 8)
IDLE_KEEP_S = 15.0  # an idle connection older than this is closed, not reused (as aiohttp does)
MAX_ANSWER_BYTES = 64 * 1024  # an ack is ~40 bytes; a collector sending more is not one
_READ_SIZE = 4096
_UINT32 = 1 << 32


class ProtocolError(Exception):
    """The collector answered something other than the ack we wait for."""


def new_chunk_id() -> str:
    """A chunk id as fluent-logger makes them: base64 of 16 random bytes."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def event_time(ns: int) -> msgpack.ExtType:
    """Unix nanoseconds as an EventTime (ext type 0, seconds and nanoseconds, big-endian)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return msgpack.ExtType(EVENT_TIME_EXT, struct.pack(">II", seconds, nanos))


def _time_ns(event: Event) -> int:
    """The WAL append time; when eventsinkd read it if the WAL's timestamp is unusable."""
    ns = event.wal_time_ns
    if ns is None or not 0 <= ns // 1_000_000_000 < _UINT32:
        return event.read_ns
    return ns


def encode_message(
    tag: str, events: Sequence[Event], chunk: str, content: ContentMode = "summary"
) -> bytes:
    """The Forward-mode message for ``events``: ``[tag, [[time, record], ...], option]``."""
    entries = [[event_time(_time_ns(event)), orjson.loads(event.body(content))] for event in events]
    packed: bytes = msgpack.packb(
        [tag, entries, {"chunk": chunk, "size": len(entries)}], use_bin_type=True
    )
    return packed


class _Connection:
    """One TCP (or TLS) connection to the collector: one message and its ack at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()
        self.exchanges = 0  # messages acked on this connection
        self.answered = False  # the collector sent something since the current message
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_ANSWER_BYTES)

    @property
    def reusable(self) -> bool:
        """Still open, and not idle for so long that a middlebox may have dropped it."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < IDLE_KEEP_S
        )

    async def request(self, message: bytes, chunk: str) -> None:
        """Send ``message`` and wait for the collector's ack of ``chunk``."""
        self.answered = False
        self.writer.write(message)
        await self.writer.drain()
        while True:
            for answer in self._unpacker:
                self._check_ack(answer, chunk)
                self.exchanges += 1
                return
            data = await self.reader.read(_READ_SIZE)
            if not data:
                raise ConnectionResetError("the collector closed the connection before the ack")
            self.answered = True
            self._unpacker.feed(data)

    @staticmethod
    def _check_ack(answer: Any, chunk: str) -> None:
        if isinstance(answer, dict) and "ack" in answer:
            ack = answer["ack"]
            if ack == chunk or ack == chunk.encode():
                return
            raise ProtocolError("the collector acked another chunk than the one sent")
        if isinstance(answer, list | tuple) and answer and answer[0] == "HELO":
            raise ProtocolError(
                "the collector asks for shared_key authentication (HELO), "
                "which eventsinkd does not support"
            )
        raise ProtocolError(f"unexpected answer from the collector ({type(answer).__name__})")

    def abort(self) -> None:
        """Close at once, dropping anything unsent or unread (a late ack included)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class FluentdTransport:
    def __init__(self, cfg: FluentdSinkConfig) -> None:
        self.cfg = cfg
        self.max_batch = cfg.max_batch
        endpoint = cfg.endpoint
        self._host, self._port = endpoint.host, endpoint.port
        self._tls = endpoint.scheme == "fluentd+tls"
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []  # most recently used last
        self._busy: set[_Connection] = set()
        self._closed = False

    async def open(self) -> None:
        self._closed = False
        if self._tls and self._ssl is None:
            self._ssl = ssl_context(self.cfg.tls)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        busy, self._busy = list(self._busy), set()
        for conn in busy:
            conn.abort()
        await asyncio.gather(*(conn.close() for conn in idle))

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        if not events:
            return []
        phase: list[str] = []  # how far it got, for the detail of a timeout
        try:
            async with asyncio.timeout(self.cfg.timeout_seconds):
                await self._exchange(events, phase)
        except TimeoutError:
            detail = f"no ack within {self.cfg.timeout_seconds}s ({phase[-1]})"
            return all_failed(events, Attempt(Outcome.TIMEOUT, None, detail))
        except ProtocolError as exc:
            return all_failed(events, Attempt(Outcome.CONNECTION, None, str(exc)))
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            # OSError covers refused, reset, unreachable and ssl.SSLError; ValueError and
            # UnpackException an answer that is not msgpack (or too long to be an ack).
            detail = str(exc) or type(exc).__name__
            return all_failed(events, Attempt(Outcome.CONNECTION, None, detail))
        return all_failed(events, Attempt(Outcome.DELIVERED, None, "acked"))

    async def _exchange(self, events: Sequence[Event], phase: list[str]) -> None:
        """One message for ``events`` and its ack; raises for anything else.

        A kept connection that turns out to have been closed by the collector meanwhile
        (closed or reset before it answered a byte: the keep-alive race) is replaced by a
        new one at once, as HTTP clients do, rather than failing the batch: the collector
        cannot have acked a message it never answered, so this is no more a duplicate risk
        than the sink's own retry. Any other failure fails the batch.
        """
        while True:
            phase.append("connecting")
            conn = await self._acquire()
            phase.append("waiting for the ack")
            chunk = new_chunk_id()
            message = encode_message(self.cfg.tag, events, chunk, self.cfg.content)
            try:
                await conn.request(message, chunk)
            except BaseException as exc:  # cancelled included: the connection goes
                self._busy.discard(conn)
                conn.abort()
                stale = isinstance(exc, ConnectionError) and conn.exchanges and not conn.answered
                if stale and not self._closed:
                    continue
                raise
            self._busy.discard(conn)
            self._release(conn)
            return

    def _release(self, conn: _Connection) -> None:
        """Keep ``conn`` for the next batch, unless the pool is full or the transport closed."""
        if self._closed or len(self._idle) >= self.cfg.max_requests:
            conn.writer.close()  # closes once what is written is flushed; nothing to wait for
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                self._busy.add(conn)
                return conn
            conn.abort()
        reader, writer = await asyncio.open_connection(
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl is not None else None,
        )
        conn = _Connection(reader, writer)
        self._busy.add(conn)
        return conn
