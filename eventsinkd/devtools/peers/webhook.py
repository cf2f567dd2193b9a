"""Webhook receivers on 127.0.0.1, one per use:

- :class:`WebhookServer` for the tests: aiohttp, every request kept, a programmable answer
  (``behaviour``); :func:`https_receiver` the same over TLS.
- :class:`Receiver`: ``eventsinkd receive``, which checks signatures and prints what arrives
  (for operators testing a config, and the receiving end of ``eventsinkd demo``).
- :func:`start_raw` / :func:`start_aiohttp` for the benchmarks (``bench/receiver.py`` runs
  them in a child process): they only count (:class:`Counter`, on ``GET /__stats``) and
  answer 204 after a fixed latency. The raw one is a bare asyncio HTTP/1.1 keep-alive
  protocol written by hand, because it must cost the benchmark's machine a few tens of
  microseconds per request (aiohttp's server costs several times that); it only understands
  what HTTP clients like aiohttp send (Content-Length bodies).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from eventsinkd.common.ports import listening_port, server_port
from eventsinkd.devtools.peers.serving import STATS_PATH, serve_app
from eventsinkd.transports.signing import verify


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    at: float
    target: str = ""  # the request target as it came (path and query, not decoded)


Behaviour = Callable[[int, web.Request], Awaitable[web.StreamResponse]]


async def ok(_n: int, _req: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


@dataclass
class WebhookServer:
    behaviour: Behaviour = ok
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    any_path: bool = False  # take POSTs to every path, not only /hook
    _runner: web.AppRunner | None = None
    # Every connection the server set up (see stop()).
    _handlers: list[RequestHandler] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        n = len(self.requests)
        self.requests.append(Received(body, dict(req.headers), time.monotonic(), req.raw_path))
        return await self.behaviour(n, req)

    @property
    def open_connections(self) -> int:
        """Connections open, or closed with their handler still running: 0 once every
        request a client sent before it closed (or was killed) has been handled."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def start(self, port: int = 0) -> WebhookServer:
        app = web.Application()
        app.router.add_post("/{path:.*}" if self.any_path else "/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        register = server.connection_made

        def connection_made(handler: RequestHandler, transport: Any) -> None:
            self._handlers.append(handler)
            register(handler, transport)

        # An instance attribute: each connection's handler calls it on its server.
        server.connection_made = connection_made  # type: ignore[method-assign]
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = listening_port(self._runner)
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()  # no new connections from here on, but...
        # ...one accepted just before is set up over a few loop turns (asyncio accepts in a
        # task). aiohttp's shutdown lists the connections once and then forgets them all,
        # so it would miss that one, which is then garbage-collected open: a ResourceWarning
        # that fails whichever test runs (seen once, in test_cursors' random outages).
        for _ in range(10):
            await asyncio.sleep(0)
        await runner.cleanup()
        # Under load more than one is caught that way: a burst of clients reconnecting as
        # the listener closes (a receiver going down under a daemon with many requests in
        # flight). Those set up during the shutdown's wait are forgotten by it too, so every
        # connection this server ever set up is closed here, once the last have come in.
        await asyncio.sleep(0.05)
        handlers, self._handlers = self._handlers, []
        for handler in handlers:
            handler.force_close()

    async def wait_for(self, n: int, timeout_s: float = 30) -> None:
        """Wait for ``n`` requests; fail the test if they do not come within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.requests) < n:
            assert loop.time() < deadline, f"{len(self.requests)} of {n} requests in {timeout_s}s"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def https_receiver(ctx: ssl.SSLContext) -> AsyncIterator[tuple[str, list[str]]]:
    """An https webhook receiver on 127.0.0.1 with the server context ``ctx``: its URL, and
    the webhook-ids it answered 204 to."""
    seen: list[str] = []

    async def hook(req: web.Request) -> web.Response:
        seen.append(req.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    try:
        yield f"https://127.0.0.1:{listening_port(runner)}/hook", seen
    finally:
        await runner.cleanup()


# -- eventsinkd receive ------------------------------------------------------------


class Receiver:
    """``eventsinkd receive``: checks signatures with ``keys``, prints each event to ``out``."""

    def __init__(self, keys: list[bytes], out: TextIO | None = sys.stdout) -> None:
        self.keys = keys
        self.out = out
        self.received: Tally[str] = Tally()  # webhook-id -> deliveries
        self.bad_signatures = 0
        self.bad_requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def unique(self) -> int:
        return len(self.received)

    @property
    def duplicates(self) -> int:
        return sum(self.received.values()) - len(self.received)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = listening_port(self._runner)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        msg_id = req.headers.get("webhook-id", "")
        if self.keys and not verify(
            self.keys,
            msg_id,
            req.headers.get("webhook-timestamp", ""),
            body,
            req.headers.get("webhook-signature", ""),
        ):
            self.bad_signatures += 1
            self._print(f"REJECTED {msg_id or '(no webhook-id)'}: bad or missing signature")
            return web.Response(status=401, text="bad signature\n")
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.bad_requests += 1
            return web.Response(status=400, text="body is not JSON\n")
        if not msg_id:
            self.bad_requests += 1
            return web.Response(status=400, text="no webhook-id header\n")
        self.received[msg_id] += 1
        again = " (again)" if self.received[msg_id] > 1 else ""
        if isinstance(event, dict):
            self._print(
                f"{event.get('event_type')} {event.get('payload_id')} "
                f"source={event.get('source')} subject={event.get('subject')} "
                f"at={event.get('timestamp')}{again}"
            )
        return web.Response(status=204)

    def _print(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)


# -- the benchmarks': counting only -----------------------------------------------------

MAX_HEAD_BYTES = 64 * 1024
RESPONSE_204 = b"HTTP/1.1 204 No Content\r\nServer: bench-receiver\r\n\r\n"
RESPONSE_501 = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
RESPONSE_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Counter:
    """What the receiver reports on ``GET /__stats``."""

    __slots__ = ("arrivals", "first_ns", "last_ns", "received", "requests")

    def __init__(self, record_arrivals: bool = False) -> None:
        self.requests = 0  # POSTs answered
        self.received = 0  # POSTs received (answered or not yet)
        self.first_ns = 0
        self.last_ns = 0
        self.arrivals: dict[str, int] | None = {} if record_arrivals else None

    def arrived(self, webhook_id: str | None) -> None:
        """A POST has been read in full (called before its answer is scheduled)."""
        now = time.monotonic_ns()
        if not self.received:
            self.first_ns = now
        self.last_ns = now
        self.received += 1
        if self.arrivals is not None and webhook_id is not None:
            self.arrivals.setdefault(webhook_id, now)

    def stats_json(self, arrivals: bool = False) -> bytes:
        doc: dict[str, Any] = {
            "requests": self.requests,
            "received": self.received,
            "cpu_s": time.process_time(),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }
        if self.arrivals is not None:
            doc["unique"] = len(self.arrivals)
            if arrivals:
                doc["arrivals"] = self.arrivals
        return json.dumps(doc).encode()


def _wants_arrivals(target: str) -> bool:
    return "arrivals=1" in target.partition("?")[2].split("&")


def _stats_response(counter: Counter, arrivals: bool = False) -> bytes:
    body = counter.stats_json(arrivals)
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- raw asyncio HTTP/1.1 server -------------------------------------------------------


class RawHttp(asyncio.Protocol):
    """Just enough HTTP/1.1: keep-alive, Content-Length bodies, pipelining in order."""

    def __init__(self, counter: Counter, latency_s: float) -> None:
        self.counter = counter
        self.latency_s = latency_s
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.pending = 0  # POSTs waiting for their answer on this connection
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while self.transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._fail(RESPONSE_400)
                return
            raw_head = bytes(buf[:end])
            head = raw_head.lower()
            if b"transfer-encoding:" in head:
                self._fail(RESPONSE_501)  # chunked bodies: not needed by the benchmark
                return
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                try:
                    length = int(head[at + 17 : stop if stop >= 0 else None])
                except ValueError:
                    self._fail(RESPONSE_400)
                    return
            total = end + 4 + length
            if len(buf) < total:
                return
            del buf[:total]
            if b"\r\nconnection: close" in head:
                self.close_after = True
            if head.startswith(b"get " + STATS_PATH.encode()):
                target = head.split(b" ", 2)[1].decode("latin-1")
                self._write(_stats_response(self.counter, _wants_arrivals(target)))
                continue
            webhook_id = None
            if self.counter.arrivals is not None:
                at = head.find(b"\r\nwebhook-id:")
                if at >= 0:  # the value in its original case (lower() keeps the offsets)
                    stop = head.find(b"\r\n", at + 2)
                    value = raw_head[at + 13 : stop if stop >= 0 else None]
                    webhook_id = value.strip().decode("latin-1")
            self.counter.arrived(webhook_id)
            self.pending += 1
            if self.latency_s > 0:
                self.loop.call_later(self.latency_s, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        # Every answer is the same 204, so answering the oldest pending request is exact.
        self.pending -= 1
        if self.transport is None or self.transport.is_closing():
            return
        self.counter.requests += 1
        self._write(RESPONSE_204)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self.close_after and self.pending == 0:
            self.transport.close()

    def _fail(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.close()
        self.transport = None


async def start_raw(counter: Counter, latency_s: float) -> tuple[int, Callable[[], Any]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RawHttp(counter, latency_s), "127.0.0.1", 0, backlog=1024
    )
    port = server_port(server)

    async def close() -> None:
        server.close()

    return port, close


# -- aiohttp server --------------------------------------------------------------------


async def start_aiohttp(counter: Counter, latency_s: float) -> tuple[int, Callable[[], Any]]:
    from aiohttp import web

    async def hook(req: web.Request) -> web.StreamResponse:
        await req.read()
        counter.arrived(req.headers.get("webhook-id"))
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        counter.requests += 1
        return web.Response(status=204)

    async def stats(req: web.Request) -> web.StreamResponse:
        body = counter.stats_json(req.query.get("arrivals") == "1")
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(STATS_PATH, stats)
    app.router.add_post("/{tail:.*}", hook)
    return await serve_app(app)


IMPLS = {"raw": start_raw, "aiohttp": start_aiohttp}
