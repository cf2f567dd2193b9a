"""A small HTTP/1.1 client for webhooks: keep-alive POSTs, nothing else.

Why not aiohttp here (it still carries OTLP): a webhook is one small POST per
event, and aiohttp's general client spends ~60 µs of CPU on each one (cookie
jar, tracing, redirects, multidicts, a payload object, timers), as much as
everything else eventsinkd does per event. A webhook needs none of that:
POST with a few headers on a kept-open connection, read the status, the
Retry-After header and a bounded body, and never follow a redirect (a 3xx is a
permanent failure). Measured with ``python -m bench.webhook_client`` (16
connections, 0 ms receiver): about a third of aiohttp's CPU per request
(BENCHMARKS.md).

What it does, per RFC 9112:

* requests with ``Content-Length``; the request line and the sink's static
  headers are encoded once;
* responses framed by ``Content-Length``, ``Transfer-Encoding: chunked``
  (extensions and trailers skipped), or the end of the connection; 1xx
  responses before the final one are skipped; 204 and 304 have no body;
* a connection is kept for the next request unless the response says
  ``Connection: close``, is HTTP/1.0 without keep-alive, ends with the
  connection, or was not read to its end; idle connections are closed after
  ``IDLE_S``;
* a kept connection the server closed meanwhile (it fails before any byte of a
  response arrives) is retried once on a new one: a webhook's id makes a second
  delivery harmless;
* TLS through the sink's ``ssl.SSLContext``; basic auth from ``user:pass@`` in
  the URL.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Sequence
from typing import cast
from urllib.parse import unquote, urlsplit

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of a response
IDLE_S = 30.0  # a connection unused this long is closed (servers close theirs after 5-75 s)
MAX_IDLE = 64  # connections kept idle per pool, unless the pool is told otherwise


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as RFC 9112 frames it."""


class StaleConnection(ConnectionError):
    """A kept connection was closed by the server before any byte of a response."""


class Response:
    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes]) -> None:
        self.status = status
        self.headers = headers  # lower-cased names; the last value of a repeated header

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode())
        return None if value is None else value.decode("latin-1")


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, the response parsed as its bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int) -> None:
        self.loop = loop
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0  # responses read on it
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._got_bytes = False
        self._head: Response | None = None
        self._keep = True
        self._left = 0  # body bytes still to read (Content-Length), or -1: to the close
        self._chunked = False
        self._chunk_state = 0  # 0: size line; 1: data; 2: CRLF after data; 3: trailers
        self._body_read = 0
        self._deadline = 0.0  # the request's (the loop's clock)
        self._timer: asyncio.TimerHandle | None = None  # at or before the deadline
        self._timer_at = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._fail(ProtocolError("bytes arrived with no request waiting"))
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    # -- one exchange ----------------------------------------------------------------------

    def request(self, head: bytes, body: bytes, deadline: float) -> asyncio.Future[Response]:
        """Send a request; the future fails with TimeoutError if the response is not complete
        by ``deadline`` (the loop's clock).

        The connection's timer is not made and cancelled per request (3 µs on uvloop, as
        much as the rest of the request's bookkeeping): it stays set at an earlier
        request's deadline, and when it fires, times the request out or moves on to the
        deadline of the request then in flight.
        """
        assert self.transport is not None and self._waiter is None
        self._waiter = self.loop.create_future()
        self._deadline = deadline
        if self._timer is None or deadline < self._timer_at:  # (a shorter timeout than before)
            self._set_timer(deadline)
        self._got_bytes = False
        self._head = None
        self.transport.writelines((head, body))
        return self._waiter

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is None or self.closed:
            return  # idle: the next request sets the timer again
        if self.loop.time() >= self._deadline:
            self._fail(TimeoutError())
        else:
            self._set_timer(self._deadline)

    def _set_timer(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._check_deadline)
        self._timer_at = at

    def _parse(self) -> None:
        while self._waiter is not None:
            if self._head is None:
                if not self._read_head():
                    return
                continue
            if not self._read_body():
                return
            waiter, head = self._waiter, self._head
            self._waiter = None
            self.used += 1
            if not self._keep or self._buf:  # more than one response: not ours to keep
                self.close()
            if not waiter.done():
                waiter.set_result(head)
            return

    def _read_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise ProtocolError(f"response head over {MAX_HEAD_BYTES} bytes")
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        del self._buf[: end + 4]
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            headers[name.lower()] = value.strip()
        if 100 <= status < 200:
            return True  # informational: the final response follows
        conn = headers.get(b"connection", b"").lower()
        self._keep = b"close" not in conn and (version == b"HTTP/1.1" or b"keep-alive" in conn)
        self._chunked = False
        self._body_read = 0
        if status in (204, 304):
            self._left = 0
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._chunked, self._chunk_state, self._left = True, 0, 0
        elif b"content-length" in headers:
            try:
                self._left = int(headers[b"content-length"])
            except ValueError:
                raise ProtocolError("Content-Length is not a number") from None
            if self._left < 0:
                raise ProtocolError("negative Content-Length")
        else:
            self._left, self._keep = -1, False  # the body ends with the connection
        self._head = Response(status, headers)
        return True

    def _read_body(self) -> bool:
        """Consume (and discard) body bytes; True once the body is complete."""
        if self._chunked:
            return self._read_chunks()
        if self._left < 0:
            self._discard(len(self._buf))
            return False  # complete only when the connection ends
        take = min(self._left, len(self._buf))
        self._discard(take)
        self._left -= take
        return self._left == 0

    def _read_chunks(self) -> bool:
        buf = self._buf
        while True:
            if self._chunk_state == 1:  # chunk data
                take = min(self._left, len(buf))
                self._discard(take)
                self._left -= take
                if self._left:
                    return False
                self._chunk_state = 2
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("chunk framing line too long")
                return False
            line = bytes(buf[:end])
            del buf[: end + 2]
            if self._chunk_state == 2:  # the CRLF after a chunk's data
                if line:
                    raise ProtocolError("chunk data longer than its size")
                self._chunk_state = 0
            elif self._chunk_state == 0:  # a size line, maybe with extensions
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line: {line[:40]!r}") from None
                if size == 0:
                    self._chunk_state = 3
                else:
                    self._left, self._chunk_state = size, 1
            elif not line:  # state 3: trailers end with an empty line
                return True

    def _discard(self, n: int) -> None:
        del self._buf[:n]
        self._body_read += n
        if self._body_read > self.max_body:
            self._keep = False  # not worth reading: the connection goes

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._waiter = None
        if self._head is not None and self._left < 0 and not self._chunked:
            waiter.set_result(self._head)  # a body that ends with the connection: complete
        elif not self._got_bytes and self.used:
            waiter.set_exception(StaleConnection("the server closed the kept connection"))
        else:
            waiter.set_exception(
                exc or ConnectionError("the server closed the connection mid-response")
            )

    def _fail(self, exc: Exception) -> None:
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


class H1Pool:
    """Keep-alive connections to one origin, made as needed, reused most recent first."""

    def __init__(
        self,
        url: str,
        static_headers: Sequence[tuple[str, str]],
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = 64 * 1024,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self.max_idle = max_idle  # (a sink's most requests in flight: each keeps its connection)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl_context if parts.scheme == "https" else None
        if self.ssl is None and parts.scheme == "https":
            self.ssl = ssl.create_default_context()
        self.max_body = max_body
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it is used on
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            host += f":{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = [("Host", host), *static_headers]
        if parts.username is not None:
            auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            fixed.append(("Authorization", "Basic " + base64.b64encode(auth).decode()))
        for name, value in fixed:
            _check_header(name, value)
        self._head = (
            f"POST {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fixed)
        ).encode()
        self._idle: list[_Connection] = []

    async def post(
        self, headers: Sequence[tuple[str, str]], body: bytes, timeout_s: float
    ) -> Response:
        """POST ``body`` with ``headers`` added to the static ones. Raises ValueError for a
        header that cannot be sent, TimeoutError, OSError (ConnectionError...) or
        ProtocolError."""
        for name, value in headers:
            if "\r" in value or "\n" in value or "\0" in value:
                raise ValueError(f"the {name} header would hold a line break or NUL")
        extra = "".join(f"{n}: {v}\r\n" for n, v in headers).encode()
        head = b"".join((self._head, extra, b"Content-Length: %d\r\n\r\n" % len(body)))
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._take(loop.time())
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, deadline)
            except StaleConnection:
                pass  # closed while idle: once more on a new connection
        async with asyncio.timeout_at(deadline):
            conn = await self._connect()
        return await self._exchange(conn, head, body, deadline)

    async def _exchange(
        self, conn: _Connection, head: bytes, body: bytes, deadline: float
    ) -> Response:
        try:
            response = await conn.request(head, body, deadline)
        except BaseException:
            conn.close()  # cut short (timeout, cancel, error): its state is unknown
            raise
        if not conn.closed and len(self._idle) < self.max_idle:
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)
        return response

    def _take(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Connection(loop, self.max_body),
            self.host,
            self.port,
            ssl=self.ssl,
            server_hostname=self.host if self.ssl is not None else None,
        )
        return conn

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close


def _check_header(name: str, value: str) -> None:
    if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} cannot be sent (a space, colon or line break)")
