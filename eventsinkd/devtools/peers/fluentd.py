"""Fluentd Forward protocol v1 receivers on 127.0.0.1 (no Fluentd on this machine):
:class:`FluentdPeer` for the tests, strict, and :func:`start_counting` for the transports
benchmark.

The tests' peer
It follows https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1 as
``in_forward`` does: a msgpack unpacker over each connection's stream; every message one of

- Message: ``[tag, time, record(, option)]``
- Forward: ``[tag, [[time, record], ...](, option)]``
- PackedForward: ``[tag, <bin or str: a msgpack stream of [time, record]>(, option)]``
- CompressedPackedForward: the same, gzip'd (or zstd'd), with ``option.compressed``

where ``time`` is an integer or an EventTime (ext type 0: uint32 seconds, uint32 nanoseconds,
big-endian). A message whose ``option`` has a ``chunk`` is answered ``{"ack": chunk}`` once
recorded - unless the test's :attr:`FluentdPeer.plan` says otherwise for that chunk. Anything
that breaks the spec is recorded in :attr:`FluentdPeer.errors` and closes the connection, as
Fluent Bit does.

The benchmark's is an asyncio protocol with a ``msgpack.Unpacker`` per connection; it counts
the events of each Forward, PackedForward or Message mode message and answers
``{"ack": <chunk>}`` to every message whose option has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import msgpack  # type: ignore[import-untyped]
import zstandard

from eventsinkd.common.ports import server_port
from eventsinkd.devtools.peers.serving import CountingPeer, Counts, serve_app, stats_app

Mode = Literal["message", "forward", "packed", "compressed"]
# What the peer does with the next chunk: ack it; not answer (the connection stays open, and
# :meth:`FluentdPeer.ack_withheld` can answer later); close the connection without answering;
# or ack a chunk id that is not this one.
Action = Literal["ack", "withhold", "close", "wrong"]
OTHER_CHUNK = "bm90IHRoaXMgY2h1bmsgYXQgYWxsIQ=="


class EventTime(NamedTuple):
    seconds: int
    nanoseconds: int

    @property
    def ns(self) -> int:
        return self.seconds * 1_000_000_000 + self.nanoseconds


def time_ns(time: EventTime | int) -> int:
    """Unix nanoseconds of an entry's time (an integer time is whole seconds)."""
    return time.ns if isinstance(time, EventTime) else time * 1_000_000_000


def ext_hook(code: int, data: bytes) -> object:
    if code == 0 and len(data) == 8:
        return EventTime(*struct.unpack(">II", data))
    return msgpack.ExtType(code, data)


def unpacker() -> Any:
    # surrogateescape: PackedForward may carry its binary stream as a msgpack str.
    return msgpack.Unpacker(raw=False, ext_hook=ext_hook, unicode_errors="surrogateescape")


@dataclass
class Message:
    """One Forward protocol message as received."""

    tag: str
    mode: Mode
    entries: list[tuple[EventTime | int, dict[str, Any]]]
    option: dict[str, Any]
    conn: int  # which connection (1, 2, ...) it came on
    action: Action | None = None  # what the peer did about its chunk (None: no chunk)

    @property
    def chunk(self) -> str | None:
        chunk = self.option.get("chunk")
        return chunk if isinstance(chunk, str) else None

    @property
    def acked(self) -> bool:
        return self.action == "ack"

    @property
    def records(self) -> list[dict[str, Any]]:
        return [record for _, record in self.entries]


class SpecError(Exception):
    pass


def _entry(raw: Any) -> tuple[EventTime | int, dict[str, Any]]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise SpecError(f"an entry must be [time, record], got {raw!r:.80}")
    time, record = raw
    if not isinstance(time, EventTime | int) or isinstance(time, bool):
        raise SpecError(f"time must be an integer or an EventTime, got {time!r:.80}")
    if not isinstance(record, dict) or not all(isinstance(k, str) for k in record):
        raise SpecError(f"record must be a map with string keys, got {record!r:.80}")
    return time, record


def _packed(entries: bytes | str, option: dict[str, Any]) -> tuple[Mode, list[Any]]:
    """(Compressed)PackedForward: a msgpack stream of entries, as bin (or str)."""
    stream = entries.encode("utf-8", "surrogateescape") if isinstance(entries, str) else entries
    compressed = option.get("compressed", "text")
    mode: Mode = "compressed"
    if compressed == "gzip":
        stream = gzip.decompress(stream)  # several concatenated members are fine
    elif compressed == "zstd":
        stream = zstandard.ZstdDecompressor().decompressobj().decompress(stream)
    elif compressed == "text":
        mode = "packed"
    else:
        raise SpecError(f"unknown compressed option {compressed!r}")
    u = unpacker()
    u.feed(stream)
    return mode, [_entry(e) for e in u]


def parse(msg: Any, conn: int) -> Message:
    """A message as the spec defines it, or SpecError."""
    if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[0], str):
        raise SpecError(f"a message must be [tag, ...], got {msg!r:.80}")
    tag, second = msg[0], msg[1]
    if isinstance(second, EventTime | int) and not isinstance(second, bool):
        if len(msg) not in (3, 4):
            raise SpecError("Message mode is [tag, time, record(, option)]")
        mode: Mode = "message"
        entries = [_entry([second, msg[2]])]
        option = msg[3] if len(msg) == 4 else {}
    else:
        if len(msg) not in (2, 3):
            raise SpecError("(Packed)Forward mode is [tag, entries(, option)]")
        option = msg[2] if len(msg) == 3 else {}
        if not isinstance(option, dict):
            raise SpecError("option must be a map")
        if isinstance(second, list):
            mode = "forward"
            entries = [_entry(e) for e in second]
        elif isinstance(second, bytes | str):
            mode, entries = _packed(second, option)
        else:
            raise SpecError(f"unknown mode: second element {second!r:.80}")
    if not isinstance(option, dict):
        raise SpecError("option must be a map")
    if "size" in option and option["size"] != len(entries):
        raise SpecError(f"option size {option['size']} but {len(entries)} entries")
    if "chunk" in option and not isinstance(option["chunk"], str):
        raise SpecError("option chunk must be a string")
    return Message(tag, mode, entries, option, conn)


@dataclass
class FluentdPeer:
    """The receiver. ``plan`` holds the actions for the next chunks, in order; then "ack".

    ``helo``: greet every connection with HELO and expect PING, as a collector configured
    with ``shared_key`` does; any other first message is refused (counted in ``refused``)
    and the connection closed.
    """

    ssl: ssl.SSLContext | None = None
    helo: bool = False
    refused: int = 0
    port: int = 0
    plan: list[Action] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0  # accepted so far
    closed_by_client: int = 0  # connections the client closed (EOF or reset)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _gate: asyncio.Event | None = None
    _withheld: list[tuple[Message, asyncio.StreamWriter]] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        scheme = "fluentd+tls" if self.ssl is not None else "fluentd"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    # -- what arrived --------------------------------------------------------------

    def acked(self) -> list[Message]:
        return [m for m in self.messages if m.acked]

    def records(self, *, acked_only: bool = True) -> list[dict[str, Any]]:
        msgs = self.acked() if acked_only else self.messages
        return [r for m in msgs for r in m.records]

    def ids(self, *, acked_only: bool = True) -> list[str]:
        """The webhook-ids of the records received (``event_type:payload_id``)."""
        return [f"{r['event_type']}:{r['payload_id']}" for r in self.records(acked_only=acked_only)]

    def counts(self) -> Counter[str]:
        return Counter(self.ids())

    # -- holding acks back until several messages are in flight ---------------------

    def hold(self) -> None:
        """Answer nothing until :meth:`release` (messages are still recorded)."""
        self._gate = asyncio.Event()

    async def ack_withheld(self) -> int:
        """Send the acks withheld so far (late), on connections still open; how many went."""
        sent = 0
        withheld, self._withheld = self._withheld, []
        for msg, writer in withheld:
            if writer.is_closing():
                continue
            writer.write(msgpack.packb({"ack": msg.chunk}))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            sent += 1
        return sent

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def wait_messages(self, n: int, timeout_s: float = 30) -> None:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.messages) >= n), timeout_s
            )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, port: int | None = None) -> FluentdPeer:
        """Listen (again: on the same port after :meth:`stop`)."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port if port is None else port, ssl=self.ssl
        )
        self.port = server_port(self._server)
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection at once (the collector is gone)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FluentdPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one connection ------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn = self.connections
        u = unpacker()
        greeted = False
        try:
            if self.helo:
                hello = ["HELO", {"nonce": b"n" * 16, "auth": b"", "keepalive": True}]
                writer.write(msgpack.packb(hello))
                await writer.drain()
                greeted = True
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionError, ssl.SSLError):
                    data = b""
                if not data:
                    self.closed_by_client += 1
                    return
                u.feed(data)
                for raw in u:
                    if greeted:
                        if not (isinstance(raw, list) and raw and raw[0] == "PING"):
                            self.refused += 1
                            return
                        greeted = False  # the PING/PONG exchange itself is not simulated
                        continue
                    try:
                        msg = parse(raw, conn)
                    except SpecError as exc:
                        self.errors.append(str(exc))
                        return
                    if not await self._answer(msg, writer):
                        return
        except (ValueError, msgpack.UnpackException) as exc:
            self.errors.append(f"not msgpack: {exc}")
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    async def _answer(self, msg: Message, writer: asyncio.StreamWriter) -> bool:
        """Record ``msg`` and do what the plan says; False to close the connection."""
        if msg.chunk is not None:
            msg.action = self.plan.pop(0) if self.plan else "ack"
        self.messages.append(msg)
        async with self._arrived:
            self._arrived.notify_all()
        if self._gate is not None:
            await self._gate.wait()
        if msg.action is None:
            return True
        if msg.action == "withhold":
            self._withheld.append((msg, writer))
            return True
        if msg.action == "close":
            return False
        ack = msg.chunk if msg.action == "ack" else OTHER_CHUNK
        writer.write(msgpack.packb({"ack": ack}))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return True


# -- the benchmark's: counting only ---------------------------------------------------


def _forward_events(message: Any) -> tuple[int, str | None]:
    """(events in a Forward protocol message, its option's chunk or None)."""
    if not isinstance(message, list) or len(message) < 2:
        raise ValueError("not a Forward protocol message")
    option = message[-1] if isinstance(message[-1], dict) else {}
    entries = message[1]
    if isinstance(entries, list):  # Forward mode
        n = len(entries)
    elif isinstance(entries, bytes | str):  # PackedForward: a msgpack stream of entries
        if option.get("compressed"):
            raise ValueError("CompressedPackedForward is not counted by this peer")
        raw = entries.encode("utf-8", "surrogateescape") if isinstance(entries, str) else entries
        n = sum(1 for _ in _unpack_all(raw))
    else:  # Message mode: [tag, time, record(, option)]
        n = 1
    chunk = option.get("chunk")
    if isinstance(chunk, bytes):
        chunk = chunk.decode("utf-8", "surrogateescape")
    return n, chunk if isinstance(chunk, str) else None


def _unpack_all(raw: bytes) -> Any:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    return iter(unpacker)


class ForwardCounter(asyncio.Protocol):
    """One connection: msgpack messages in, ``{"ack": chunk}`` out for each with a chunk."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.transport: asyncio.Transport | None = None
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        self.packb = msgpack.packb

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        out = []
        try:
            for message in self.unpacker:
                n, chunk = _forward_events(message)
                self.counts.arrived(n)
                if chunk is not None:
                    out.append(self.packb({"ack": chunk}, use_bin_type=True))
        except Exception:  # not the Forward protocol: counted, connection closed
            self.counts.errors += 1
            if self.transport is not None:
                self.transport.close()
            return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def start_counting(counts: Counts) -> CountingPeer:
    """Forward on a TCP port, ``GET /__stats`` on another."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ForwardCounter(counts), "127.0.0.1", 0, backlog=1024)
    port = server_port(server)
    stats_port, close_stats = await serve_app(stats_app(counts))

    async def close() -> None:
        server.close()
        await close_stats()

    return port, stats_port, close
