"""One HTTP/1.1 connection of the HTTP sinks' client: a POST, then its response's head.

The bytes are framed by **httptools** (llhttp, Node.js's parser, as uvicorn uses it):
status line, headers, ``Content-Length``, chunked bodies, 1xx responses and every
framing error are its business. What is written by hand here is only what llhttp
leaves to its caller: which response belongs to which request, when a connection
may carry the next one, and when to stop waiting (aiohttp's client does all of it,
at three times the CPU per request and with the stray-response flaw below; see
:mod:`eventsinkd.transports.client` and BENCHMARKS.md).

The rules (issue 22):

* the outcome is the **final response head** (1xx skipped); the body is read only to
  keep the connection (and, for OTLP, to read the collector's answer), at most
  ``max_body`` bytes. A body that is too long, slow (past the request's deadline),
  endless or cut off closes the connection and keeps the status;
* a status outside 100-599, an HTTP version other than 1.0/1.1, conflicting
  ``Content-Length`` values or any other framing error is a :class:`ProtocolError`
  (retryable, connection closed), never a status;
* after a response that is not 2xx, that was not read to its end, or that was followed
  by more bytes, the connection is closed: a receiver in trouble may have more to say
  on it, and a stray answer read after the next request is written cannot be told from
  the real one. Bytes arriving on an idle connection close it too, and the pool looks
  at the socket right before writing (:meth:`Connection.usable`);
* bare-LF line ends are accepted (llhttp's ``lenient_optional_cr_before_lf``), as curl
  and browsers accept them: the framing stays unambiguous, and refusing them would make
  every POST to such a receiver fail.

The connection's timer is not made and cancelled per request (3 µs on uvloop, as much
as the rest of a request's bookkeeping): it stays set at an earlier request's deadline
and, when it fires, times the request out or moves on to the deadline then in force.
"""

from __future__ import annotations

import asyncio
import select
from typing import cast

import httptools


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as RFC 9112 frames it."""


class StaleConnection(ConnectionError):
    """A kept connection was closed by the server before any byte of a response."""


class _Stop(Exception):
    """Raised in a parser callback: the exchange is decided, stop reading this connection."""


class Response:
    __slots__ = ("body", "complete", "headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes]) -> None:
        self.status = status
        self.headers = headers  # lower-cased names; the last value of a repeated header
        self.body: bytes | None = None  # when the caller asked for it and it was read whole
        self.complete = False  # the body was read to its end

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode())
        return None if value is None else value.decode("latin-1")


class Connection(asyncio.Protocol):
    """One connection: one request at a time, the response parsed as its bytes arrive."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_body: int, keep_body: bool, born: float
    ) -> None:
        self.loop = loop
        self.max_body = max_body
        self.keep_body = keep_body  # hand the body to the caller (OTLP), not only skip it
        self.born = born
        self.transport: asyncio.Transport | None = None
        self._poll: select.poll | None = None  # the socket's, to look at it before writing
        self.closed = False
        self.used = 0  # responses read on it
        self.idle_since = 0.0
        self._parser = _parser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._got_bytes = False
        self._head: Response | None = None
        self._headers: dict[bytes, bytes] = {}
        self._informational = False
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._deadline = 0.0  # the request's (the loop's clock)
        self._timer: asyncio.TimerHandle | None = None  # at or before the deadline
        self._timer_at = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # on an idle connection: a stray answer, or a goodbye
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                self._fail(exc.__context__ or exc)
            else:
                self.close()  # decided in a callback, which said whether to keep the status
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the server switched protocols (101), unasked"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    # -- llhttp's callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second response to one request
            raise _Stop
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if not 100 <= status <= 599 or parser.get_http_version() not in ("1.1", "1.0"):
            version = parser.get_http_version()
            raise ProtocolError(f"not an HTTP/1.x status line (HTTP/{version} {status})")
        if status < 200:
            self._informational = True  # the final response follows
            return
        self._head = Response(status, self._headers)
        if not self.keep_body and not 200 <= status < 300:
            self._finish(keep=False)  # decided; the connection is not kept anyway
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.max_body:
            self._finish(keep=False)  # not worth reading: the status stands, the connection goes
            raise _Stop
        if self.keep_body:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        head = self._head
        assert head is not None
        head.complete = True
        if self.keep_body:
            head.body = b"".join(self._chunks)
        self._finish(keep=200 <= head.status < 300 and self._parser.should_keep_alive())

    # -- one exchange ----------------------------------------------------------------------

    def watch(self) -> None:
        """Look at the socket itself in :meth:`usable` (from now on: after any TLS setup).

        poll(), not a MSG_PEEK recv: that raises BlockingIOError in the usual case, and the
        exception costs three times the system call (measured: 3.7 against 1.2 µs)."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN | select.POLLPRI)

    def usable(self) -> bool:
        """Nothing has arrived on the idle connection since its last response, and it is not
        at its end: looked at on the socket itself, right before writing. (The socket is
        open: it is closed only after ``closed`` is set.)"""
        if self.closed:
            return False
        return self._poll is None or not self._poll.poll(0)  # (EOF and errors count as events)

    def request(self, data: tuple[bytes, ...], deadline: float) -> asyncio.Future[Response]:
        """Send a request; the future fails with TimeoutError if no final response head has
        come by ``deadline`` (the loop's clock)."""
        assert self.transport is not None and self._waiter is None
        self._waiter = self.loop.create_future()
        self._deadline = deadline
        if self._timer is None or deadline < self._timer_at:  # (a shorter timeout than before)
            self._set_timer(deadline)
        self._got_bytes = False
        self._head = None
        self._informational = False
        if self._body_size or self._chunks:
            self._body_size, self._chunks = 0, []
        self.transport.writelines(data)
        return self._waiter

    def _finish(self, keep: bool) -> None:
        waiter, head = self._waiter, self._head
        self._waiter = None
        self.used += 1
        if not keep:
            self.close()
        if waiter is not None and head is not None and not waiter.done():
            waiter.set_result(head)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is None or self.closed:
            return  # idle: the next request sets the timer again
        if self.loop.time() < self._deadline:
            self._set_timer(self._deadline)
        elif self._head is not None:
            self._finish(keep=False)  # a slow or endless body: the status stands
        else:
            self._fail(TimeoutError())

    def _set_timer(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._check_deadline)
        self._timer_at = at

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head is not None:
            head = self._head
            framed = b"content-length" in head.headers or b"transfer-encoding" in head.headers
            if self.keep_body and not framed:  # a body that ends with the connection: whole
                head.body = b"".join(self._chunks)
            self._finish(keep=False)  # a body cut off (or ending with the connection)
            return
        self._waiter = None
        if not self._got_bytes and self.used:
            waiter.set_exception(StaleConnection("the server closed the kept connection"))
        else:
            waiter.set_exception(
                exc or ConnectionError("the server closed the connection mid-response")
            )

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _parser(protocol: object) -> httptools.HttpResponseParser:
    parser = httptools.HttpResponseParser(protocol)
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
    return parser


class ProxyAnswer(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: its status line and headers, nothing more (the
    tunnel's bytes that follow belong to TLS)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._reason = b""
        self._parser = _parser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                self.answer.set_exception(ProtocolError(f"malformed proxy answer: {exc}"))
        except httptools.HttpParserError as exc:
            self.answer.set_exception(ProtocolError(f"malformed proxy answer: {exc}"))

    def on_message_begin(self) -> None:
        self._reason = b""  # (after a 1xx)

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200:
            reason = self._reason.decode("latin-1")[:80]
            self.answer.set_result((status, reason))
            raise _Stop

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                exc or ConnectionError("the proxy closed the connection without answering")
            )
