"""``type: syslog``: RFC 5424 messages over UDP, TCP (RFC 6587) or TLS (RFC 5425).

One event is one message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [event@32473 id="..." payload_id="..."] MSG

- PRI = facility * 8 + 6 (severity informational); TIMESTAMP = the entry's WAL time in UTC,
  microseconds (RFC 5424 allows at most 6 fraction digits, so the Go nanoseconds are cut, not
  rounded); HOSTNAME = ``hostname`` or this host's name; APP-NAME = ``tag``; PROCID ``-``;
  MSGID = the event type; one SD-ELEMENT with the webhook-id and the payload_id (PARAM-VALUE
  escaping of ``"``, ``\\`` and ``]``).
- MSG is exactly the JSON body a webhook receiver gets, UTF-8, without a BOM: RFC 5424's
  MSG-ANY. A BOM would make MSG something other than that body and trips up the JSON parsers
  syslog pipelines put behind it (rsyslog's mmjsonparse, Logstash's json codec...).

The ~20 lines that format a message are written here: the syslog clients on PyPI are
logging handlers or send one message per call, and none writes a batch as one buffer or says
what became of each message.

"Delivered" is "written to the socket": syslog has no acknowledgements. UDP: one datagram
per message through a connected socket, delivered once the kernel took it. TCP and TLS: a
batch is one buffer, written and drained (with asyncio's write buffer limit at 0, so drain
returns once the kernel has it all); a connection that breaks meanwhile fails the whole batch
(CONNECTION), and the sink sends it again on a new connection - the collector may get part
of it twice. The connection is kept across batches and reopened on the next send after an
error (the sink's retry and pause schedule is the backoff). One lock serialises connect,
write and drain, so concurrent workers never interleave partial batches on the stream, nor
replace a connection another one is writing to.

Size: ``max_message_bytes`` applies to every message (the frame's length prefix or LF not
counted). Longer ones are refused (``oversize: refuse``: a PERMANENT attempt, so a dead
letter) or cut on a UTF-8 character boundary (``oversize: truncate``, counted in
``eventsinkd_messages_truncated_total`` once sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import orjson

from eventsinkd.config.sinks import SYSLOG_FACILITIES, SyslogSinkConfig
from eventsinkd.events import Event
from eventsinkd.transports.contract import Attempt, Outcome, Tally
from eventsinkd.transports.tls import ssl_context
from eventsinkd.wal.gotime import parse_go_time_ns

NILVALUE = "-"
SEVERITY_INFO = 6
# RFC 5424 custom SD-IDs are name@<private enterprise number>; 32473 is the number IANA
# reserves for examples and documentation (RFC 5612), as nobody has registered one for Nexus.
SD_ID = "event@32473"
# A connection idle this long is reopened before the next batch: with no acks, a connection a
# firewall or NAT dropped silently would swallow that batch.
IDLE_RECONNECT_S = 60.0
SECONDS_KEPT = 64  # of the WAL times' seconds validated by the exact parser (MessageFormat)
_PRINTUSASCII = re.compile(r"[!-~]+")
# Go's UTC RFC 3339 (time.RFC3339Nano): the date and time, and the first 6 fraction digits.
_GO_UTC = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6})\d{0,3})?Z", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WRITTEN = Attempt(Outcome.DELIVERED, None, "written")
SENT = Attempt(Outcome.DELIVERED, None, "sent")


def sd_escape(value: str) -> str:
    """RFC 5424 PARAM-VALUE escaping: ``"``, ``\\`` and ``]`` get a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424_timestamp(ns: int | None) -> str:
    """Unix nanoseconds as an RFC 5424 TIMESTAMP: UTC, 6 fraction digits (cut), ``Z``;
    ``-`` (unknown) for none, or for a time UTC puts outside the years 1 to 9999."""
    if ns is None:
        return NILVALUE
    try:
        when = _EPOCH + timedelta(microseconds=ns // 1000)
    except OverflowError:  # "0001-01-01T00:00:00+01:00" is in year 0 in UTC
        return NILVALUE
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def header_field(value: str, max_len: int) -> str:
    """A HOSTNAME/APP-NAME/MSGID value: 1..max_len printable ASCII characters, else ``-``."""
    return value if len(value) <= max_len and _PRINTUSASCII.fullmatch(value) else NILVALUE


def utf8_cut(data: bytes, limit: int) -> bytes:
    """``data`` cut to at most ``limit`` bytes without splitting a UTF-8 character."""
    if len(data) <= limit:
        return data
    cut = limit
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # data[cut] continues a character: back off
        cut -= 1
    return data[:cut]


def fit_message(
    cfg: SyslogSinkConfig, message: bytes, head_len: int
) -> tuple[bytes, bool] | Attempt:
    """``message`` within ``max_message_bytes`` (and whether it was cut), or the PERMANENT
    attempt that refuses it (``oversize: refuse``, or a header alone over the limit)."""
    limit = cfg.max_message_bytes
    if len(message) <= limit:
        return message, False
    if cfg.oversize == "refuse" or head_len > limit:
        why = f"message of {len(message)} bytes is over max_message_bytes {limit}"
        if cfg.oversize == "truncate":
            why += f" (its header alone is {head_len} bytes)"
        return Attempt(Outcome.PERMANENT, None, why)
    return utf8_cut(message, limit), True


class MessageFormat:
    """Renders events as RFC 5424 messages for one sink's settings.

    What is the same for every message is formatted once; per event, the TIMESTAMP and the
    payload_id come from strings the event already has when they are in the usual form
    (:meth:`timestamp`, :meth:`payload_id`), with the exact general path for anything else.
    """

    def __init__(self, cfg: SyslogSinkConfig) -> None:
        self.content = cfg.content
        self.pri = SYSLOG_FACILITIES[cfg.facility] * 8 + SEVERITY_INFO
        host = cfg.hostname or header_field(socket.gethostname(), 255)
        self.prefix_tail = f"{host} {cfg.tag} {NILVALUE} "  # HOSTNAME APP-NAME PROCID
        self._pri_version = f"<{self.pri}>1 "
        self._middles: dict[str, str] = {}  # event type -> from the SP after TIMESTAMP to id="
        self._seconds: set[str] = set()  # "YYYY-MM-DDTHH:MM:SS" (UTC) the exact path read

    def timestamp(self, go: str) -> str:
        """``rfc5424_timestamp(parse_go_time_ns(go))``, from the string itself when it is Go's
        UTC form ``YYYY-MM-DDTHH:MM:SS[.F{1,9}]Z`` of a second the exact path has read: the
        fraction cut to 6 digits. An offset, a new second or anything unusual takes the
        exact path."""
        m = _GO_UTC.fullmatch(go)
        if m is not None and (second := m[1]) in self._seconds:
            return f"{second}.{(m[2] or '').ljust(6, '0')}Z"
        exact = rfc5424_timestamp(parse_go_time_ns(go))
        if m is not None and exact[:19] == m[1]:  # a valid date and time, as RFC 5424 has it
            if len(self._seconds) >= SECONDS_KEPT:
                self._seconds.clear()
            self._seconds.add(m[1])
        return exact

    def middle(self, kind: str) -> str:
        """`` HOSTNAME APP-NAME PROCID MSGID [SD-ID id="`` for events of type ``kind``."""
        middle = self._middles.get(kind)
        if middle is None:
            if len(self._middles) >= 64:  # there is one event type; never grow without bound
                self._middles.clear()
            middle = f' {self.prefix_tail}{header_field(kind, 32)} [{SD_ID} id="'
            self._middles[kind] = middle
        return middle

    def head(self, event: Event) -> bytes:
        """Everything before MSG, ending with the SP that separates it."""
        payload_id = self.payload_id(event)
        tail = '"] ' if payload_id is None else f'" payload_id="{sd_escape(payload_id)}"] '
        return (
            f"{self._pri_version}{self.timestamp(event.timestamp)}{self.middle(event.type)}"
            f"{sd_escape(event.id)}{tail}"
        ).encode()

    def payload_id(self, event: Event) -> str | None:
        """The body's payload_id if it is a string (as ``event.fields()`` has it), else None.

        The webhook-id is ``<type>:<payload_id>`` and the body starts with event_type then
        payload_id: when the body starts with exactly that payload_id, JSON-encoded, that is
        the value (the body's keys are unique). Otherwise the body is parsed."""
        payload_id = event.id.partition(":")[2]
        # How every body starts (eventsinkd.events.event_body: event_type, then payload_id).
        start = b'{"event_type":%b,"payload_id":%b,' % (
            orjson.dumps(event.type),
            orjson.dumps(payload_id),
        )
        if event.body(self.content).startswith(start):
            return payload_id
        value = event.fields().get("payload_id")
        return value if isinstance(value, str) else None

    def message(self, event: Event) -> tuple[bytes, int]:
        """The whole message, and how many bytes of it come before MSG."""
        head = self.head(event)
        return head + event.body(self.content), len(head)


class Encoded(NamedTuple):
    """A batch as :meth:`SyslogTransport.encode` leaves it."""

    refused: list[Attempt | None]  # per event: why it is not sent, else None
    ready: list[int]  # the indexes of the events sent, in order
    data: list[bytes]  # UDP: their messages; TCP and TLS: the pieces of their frames
    cut: list[int]  # positions in ``ready`` of the messages truncated


class _Datagrams(asyncio.DatagramProtocol):
    """A connected UDP socket's protocol: remembers errors, tells when its buffer is empty."""

    def __init__(self) -> None:
        self.error: OSError | None = None
        self.flushed = asyncio.Event()
        self.flushed.set()

    def error_received(self, exc: Exception) -> None:
        # A failed send, or an ICMP error (port unreachable) for an earlier datagram.
        if isinstance(exc, OSError):
            self.error = exc

    def pause_writing(self) -> None:
        self.flushed.clear()

    def resume_writing(self) -> None:
        self.flushed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.flushed.set()


class SyslogTransport:
    def __init__(self, cfg: SyslogSinkConfig, truncated: Tally | None = None) -> None:
        self.cfg = cfg
        self.max_batch = cfg.max_batch
        self.endpoint = cfg.endpoint
        self.udp = self.endpoint.scheme == "syslog"
        self.format = MessageFormat(cfg)
        self._truncated = truncated
        self._ssl: ssl.SSLContext | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_write = 0.0
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _Datagrams | None = None

    async def open(self) -> None:
        """Nothing to reach yet: the first send connects (a collector that is down is no error)."""
        if self.endpoint.scheme == "syslog+tls":
            self._ssl = ssl_context(self.cfg.tls)

    async def close(self) -> None:
        self._drop_udp()
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.cfg.timeout_seconds)

    # -- messages ------------------------------------------------------------------

    def frame(self, message: bytes) -> bytes:
        if self.udp:
            return message
        if self.cfg.framing == "lf":
            return message + b"\n"
        return b"%d %b" % (len(message), message)  # RFC 6587 octet counting (RFC 5425 too)

    def prepare(self, event: Event) -> tuple[bytes, bool] | Attempt:
        """The message for ``event`` (and whether it was cut), or why it cannot be sent."""
        fitted = fit_message(self.cfg, *self.format.message(event))
        if isinstance(fitted, Attempt):
            return fitted
        message, cut = fitted
        if not self.udp and self.cfg.framing == "lf" and b"\n" in message:
            # Cannot happen for eventsinkd's JSON bodies (no raw newlines) and header.
            why = "message contains a line feed, which framing: lf cannot carry"
            return Attempt(Outcome.PERMANENT, None, why)
        return message, cut

    # -- sending -------------------------------------------------------------------

    def encode(self, events: Sequence[Event]) -> Encoded:
        """What :meth:`send` sends for ``events``, and what it refuses.

        The usual message (within ``max_message_bytes``, and without a line feed for LF
        framing) is framed as it is rendered, its parts left for one join; :meth:`prepare`
        deals with the others."""
        head_of = self.format.head
        content = self.format.content
        limit = self.cfg.max_message_bytes
        udp = self.udp
        octets = not udp and self.cfg.framing == "octet-counting"
        lf = not udp and not octets
        out = Encoded([None] * len(events), [], [], [])
        ready, data = out.ready, out.data
        for i, event in enumerate(events):
            head = head_of(event)
            body = event.body(content)
            size = len(head) + len(body)
            if size <= limit and not (lf and (b"\n" in head or b"\n" in body)):
                if udp:
                    data.append(head + body)
                elif octets:
                    data += (b"%d " % size, head, body)
                else:
                    data += (head, body, b"\n")
                ready.append(i)
                continue
            prepared = self.prepare(event)
            if isinstance(prepared, Attempt):
                out.refused[i] = prepared
                continue
            message, truncated = prepared
            if truncated:
                out.cut.append(len(ready))
            data.append(self.frame(message))
            ready.append(i)
        return out

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        encoded = self.encode(events)
        ready = encoded.ready
        if not ready:
            return [a for a in encoded.refused if a is not None]
        if self.udp:
            sent = await self._send_datagrams(encoded.data)
        else:
            sent = [await self._send_stream(b"".join(encoded.data))] * len(ready)
        if encoded.cut and self._truncated is not None:
            cut = sum(sent[j].outcome is Outcome.DELIVERED for j in encoded.cut)
            if cut:
                self._truncated.inc(cut)
        if len(ready) == len(events):
            return sent
        attempts = encoded.refused
        for i, attempt in zip(ready, sent, strict=True):
            attempts[i] = attempt
        return [a for a in attempts if a is not None]

    async def _send_stream(self, data: bytes) -> Attempt:
        timeout = self.cfg.timeout_seconds
        async with self._lock:
            done = False
            try:
                try:
                    async with asyncio.timeout(timeout):
                        writer = await self._connection()
                except TimeoutError:
                    return Attempt(Outcome.TIMEOUT, None, f"no connection within {timeout}s")
                try:
                    async with asyncio.timeout(timeout):
                        writer.write(data)
                        await writer.drain()
                except TimeoutError:
                    return Attempt(Outcome.TIMEOUT, None, f"could not write within {timeout}s")
                self._last_write = time.monotonic()
                done = True
                return WRITTEN
            except OSError as exc:  # refused, reset, broken pipe, TLS errors (ssl.SSLError)
                return Attempt(Outcome.CONNECTION, None, str(exc) or type(exc).__name__)
            finally:
                if not done:  # failed, timed out or cancelled: the stream may hold half a batch
                    self._drop_stream()

    @property
    def connected(self) -> bool:
        """A TCP/TLS connection is open and the collector has not closed its side."""
        writer, reader = self._writer, self._reader
        return (
            writer is not None
            and reader is not None
            and not writer.is_closing()
            and not reader.at_eof()  # the collector closed its side: it reads no more
        )

    async def _connection(self) -> asyncio.StreamWriter:
        """The open connection, or a new one if it is gone, closed by the peer, or idle long."""
        if self._writer is not None:
            if self.connected and time.monotonic() - self._last_write < IDLE_RECONNECT_S:
                return self._writer
            self._drop_stream()
        host, port = self.endpoint.host, self.endpoint.port
        tls = self._ssl
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls is not None else None
        )
        # Drain returns only once the kernel has every byte: "written to the socket". (The
        # TLS layer pauses at size >= high, the plain one at size > high.)
        writer.transport.set_write_buffer_limits(high=1 if tls is not None else 0, low=0)
        self._reader, self._writer = reader, writer
        self._last_write = time.monotonic()
        return writer

    def _drop_stream(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.transport.abort()  # discard whatever part of a batch is still buffered

    async def _send_datagrams(self, messages: list[bytes]) -> list[Attempt]:
        async with self._lock:
            result = await self._sendto_all(messages)
        return [result] * len(messages) if isinstance(result, Attempt) else result

    async def _sendto_all(self, messages: list[bytes]) -> Attempt | list[Attempt]:
        """One datagram per message; one Attempt when the batch failed as a whole."""
        timeout = self.cfg.timeout_seconds
        try:
            transport, protocol = await asyncio.wait_for(self._datagrams(), timeout)
        except TimeoutError:
            return Attempt(Outcome.TIMEOUT, None, f"no UDP socket within {timeout}s")
        except OSError as exc:  # the host does not resolve, no route...
            return Attempt(Outcome.CONNECTION, None, str(exc) or type(exc).__name__)
        error, protocol.error = protocol.error, None
        if error is not None:  # ICMP said an earlier datagram found no one (port unreachable)
            return Attempt(Outcome.CONNECTION, None, f"UDP: {error}")
        for sent, message in enumerate(messages):
            transport.sendto(message)
            error, protocol.error = protocol.error, None
            if error is not None:  # this sendto failed (asyncio reports it, does not raise)
                failed = Attempt(Outcome.CONNECTION, None, f"UDP: {error}")
                return [SENT] * sent + [failed] * (len(messages) - sent)
        if not protocol.flushed.is_set():  # the kernel's buffer was full: wait for room
            try:
                await asyncio.wait_for(protocol.flushed.wait(), timeout)
            except TimeoutError:
                self._drop_udp()
                return Attempt(Outcome.TIMEOUT, None, f"could not send within {timeout}s")
            error, protocol.error = protocol.error, None
            if error is not None:  # a buffered datagram failed; which one is unknown
                return Attempt(Outcome.CONNECTION, None, f"UDP: {error}")
        return [SENT] * len(messages)

    async def _datagrams(self) -> tuple[asyncio.DatagramTransport, _Datagrams]:
        if self._udp is None or self._udp_protocol is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(
                _Datagrams, remote_addr=(self.endpoint.host, self.endpoint.port)
            )
            # flushed = every datagram in the kernel. (Both asyncio's and uvloop's datagram
            # transports have it; typeshed's DatagramTransport does not declare it.)
            transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]
            self._udp, self._udp_protocol = transport, protocol
        return self._udp, self._udp_protocol

    def _drop_udp(self) -> None:
        transport, self._udp, self._udp_protocol = self._udp, None, None
        if transport is not None:
            transport.abort()
