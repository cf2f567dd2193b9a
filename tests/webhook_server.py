"""A real aiohttp webhook receiver on 127.0.0.1 with a programmable answer, for tests."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from eventsinkd.common.ports import listening_port


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
