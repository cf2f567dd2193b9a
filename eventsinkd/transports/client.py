"""The HTTP client of every HTTP sink (webhook and OTLP): keep-alive POSTs to one URL.

Why not aiohttp: a webhook is one small POST per event, and aiohttp's general client
spends ~60 µs of CPU on each (cookie jar, tracing, redirects, multidicts, a payload
object, timers), as much as everything else eventsinkd does per event, and it had the
stray-response flaw :mod:`eventsinkd.transports.h1` closes. What is left to write by
hand is small: the framing is llhttp's (httptools), the connecting is aiohappyeyeballs'
(the happy-eyeballs code aiohttp uses; uvloop's ``create_connection`` has no
``happy_eyeballs_delay``), the proxy choice is :mod:`eventsinkd.transports.proxy`.

* the request line and the sink's static headers are encoded once; each request adds
  its own headers (webhook ids, a signature, an ``Authorization`` a caller computes);
* connections are kept and reused most recent first, each only if nothing arrived on
  it since its last response (looked at right before writing), closed after
  ``IDLE_S`` unused or ``lifetime_s`` after they were opened (so that DNS changes are
  seen); a kept connection the server closed before answering is retried once on a new
  one (a webhook's id makes a second delivery harmless);
* redirects are never followed: the caller gets the 3xx and its ``Location``;
* through a proxy, https goes through ``CONNECT`` with TLS verified against the origin
  (SNI and certificate: the URL's host), http uses the absolute-form request target;
  ``Proxy-Authorization: Basic`` when the proxy URL has credentials. A proxy that
  refuses (an answer to CONNECT that is not 2xx, 407 to a plain request) or does not
  answer raises :class:`ProxyError`, a connection failure; messages name the proxy by
  host:port only.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import aiohappyeyeballs

from eventsinkd import __version__
from eventsinkd.transports.h1 import (
    Connection,
    ProtocolError,
    ProxyAnswer,
    Response,
    StaleConnection,
)
from eventsinkd.transports.proxy import Proxy, ProxyError

USER_AGENT = f"eventsinkd/{__version__}"

__all__ = ["HttpClient", "ProtocolError", "ProxyError", "Response"]

IDLE_S = 30.0  # a connection unused this long is closed (servers close theirs after 5-75 s)
LIFETIME_S = 300.0  # a connection this old is not reused: a new one sees DNS changes
MAX_IDLE = 64  # connections kept idle per pool, unless the pool is told otherwise
HAPPY_EYEBALLS_DELAY_S = 0.25  # RFC 8305's recommended connection attempt delay


class HttpClient:
    """Keep-alive connections to one URL (directly or through a proxy), made as needed."""

    def __init__(
        self,
        url: str,
        static_headers: Sequence[tuple[str, str]],
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | ProxyError | None = None,
        max_body: int = 64 * 1024,
        keep_body: bool = False,
        max_idle: int = MAX_IDLE,
        lifetime_s: float = LIFETIME_S,
    ) -> None:
        self.max_idle = max_idle  # (a sink's most requests in flight: each keeps its connection)
        self.lifetime_s = lifetime_s
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl_context if parts.scheme == "https" else None
        if self.ssl is None and parts.scheme == "https":
            self.ssl = ssl.create_default_context()
        self.proxy: Proxy | None = None
        self._unusable = proxy if isinstance(proxy, ProxyError) else None
        if isinstance(proxy, Proxy):
            self.proxy = proxy
        self.max_body = max_body
        self.keep_body = keep_body
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it is used on
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            host += f":{parts.port}"
        self._authority = f"{host}:{self.port}" if parts.port is None else host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = [("Host", host), *static_headers]
        if parts.username is not None:  # basic auth from user:password@ in the URL
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            fixed.append(("Authorization", "Basic " + base64.b64encode(pair).decode()))
        self._target_prefix = ""
        if self.proxy is not None and self.ssl is None:  # plain http through a proxy: absolute form
            self._target_prefix = f"http://{host}"
            if self.proxy.authorization is not None:
                fixed.append(("Proxy-Authorization", self.proxy.authorization))
        for name, value in fixed:
            _check_header(name, value)
        self._fixed = "".join(f"{n}: {v}\r\n" for n, v in fixed).encode()
        self._head = f"POST {self._target_prefix}{target} HTTP/1.1\r\n".encode() + self._fixed
        self._idle: list[Connection] = []

    async def post(
        self,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout_s: float,
        target: str | None = None,
    ) -> Response:
        """POST ``body`` with ``headers`` added to the static ones; the final response (its
        ``body`` read when the client keeps bodies and it was whole). ``target``: this
        request's path and query (``/users/42?x=1``, already percent-encoded) instead of the
        URL's, on the same pooled connections. Raises ValueError for a header or target that
        cannot be sent, TimeoutError, OSError (ConnectionError, ProxyError...) or
        ProtocolError."""
        for name, value in headers:
            if "\r" in value or "\n" in value or "\0" in value:
                raise ValueError(f"the {name} header would hold a line break or NUL")
        head = self._head
        if target is not None:
            if not target.startswith("/") or any(c in target for c in " \r\n\0#"):
                raise ValueError("the request target would hold a space, line break or #")
            head = f"POST {self._target_prefix}{target} HTTP/1.1\r\n".encode() + self._fixed
        extra = "".join(f"{n}: {v}\r\n" for n, v in headers).encode()
        data = (head, extra, b"Content-Length: %d\r\n\r\n" % len(body), body)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._take(loop.time())
        if conn is not None:
            try:
                return await self._exchange(conn, data, deadline)
            except StaleConnection:
                pass  # closed while idle: once more on a new connection
        conn = await self._connect(loop, deadline)
        return await self._exchange(conn, data, deadline)

    async def _exchange(
        self, conn: Connection, data: tuple[bytes, ...], deadline: float
    ) -> Response:
        try:
            response = await conn.request(data, deadline)
        except BaseException:
            conn.close()  # cut short (timeout, cancel, error): its state is unknown
            raise
        if conn.closed:
            pass
        elif len(self._idle) < self.max_idle:
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)
        else:
            conn.close()
        if response.status == 407 and self.proxy is not None:
            raise ProxyError(f"the proxy {self.proxy.where} refused the request: HTTP 407")
        return response

    def _take(self, now: float) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            fresh = now - conn.idle_since < IDLE_S and now - conn.born < self.lifetime_s
            if fresh and conn.usable():
                return conn
            conn.close()
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        if self._unusable is not None:
            raise self._unusable
        proxy = self.proxy
        host, port = (self.host, self.port) if proxy is None else (proxy.host, proxy.port)
        try:
            async with asyncio.timeout_at(deadline):
                sock = await _open_socket(loop, host, port)
        except TimeoutError:
            if proxy is None:
                raise
            raise ProxyError(f"the proxy {proxy.where} did not answer") from None
        except OSError as exc:
            if proxy is None:
                raise
            raise ProxyError(f"the proxy {proxy.where}: {exc.strerror or exc}") from None
        conn = Connection(loop, self.max_body, self.keep_body, loop.time())
        try:
            async with asyncio.timeout_at(deadline):
                if proxy is not None and self.ssl is not None:
                    await self._tunnel(loop, proxy, sock, conn)
                else:
                    await loop.create_connection(
                        lambda: conn,
                        sock=sock,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl is not None else None,
                    )
        except BaseException as exc:
            sock.close()
            if isinstance(exc, TimeoutError) and proxy is not None and self.ssl is not None:
                raise ProxyError(
                    f"the proxy {proxy.where} did not answer CONNECT to {self._authority}"
                ) from None
            raise
        conn.watch()
        return conn

    async def _tunnel(
        self, loop: asyncio.AbstractEventLoop, proxy: Proxy, sock: socket.socket, conn: Connection
    ) -> None:
        """CONNECT through ``proxy``, then TLS with the origin over the tunnel."""
        transport, answer = await loop.create_connection(lambda: ProxyAnswer(loop), sock=sock)
        try:
            auth = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
            transport.write(
                f"CONNECT {self._authority} HTTP/1.1\r\nHost: {self._authority}\r\n"
                f"{auth}\r\n".encode()
            )
            status, reason = await answer.answer
            if not 200 <= status < 300:
                raise ProxyError(
                    f"the proxy {proxy.where} refused CONNECT to {self._authority}: "
                    f"HTTP {status} {reason}".rstrip()
                )
            assert self.ssl is not None
            tls = await loop.start_tls(transport, conn, self.ssl, server_hostname=self.host)
        except BaseException:
            transport.close()
            raise
        assert tls is not None
        conn.connection_made(tls)

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close


async def _open_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} has no address")
    return await aiohappyeyeballs.start_connection(
        infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S, interleave=1, loop=loop
    )


def _check_header(name: str, value: str) -> None:
    if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} cannot be sent (a space, colon or line break)")
