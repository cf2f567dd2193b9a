"""The admin HTTP server: /metrics, /healthz, /readyz and /status, on the daemon's event loop.

Unauthenticated, so it only reads: nothing it serves changes what the daemon
does (replay and rewind go through the state directory, see state/control.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from eventsinkd.common.ports import listening_port
from eventsinkd.metrics import DaemonView


class AdminServer:
    def __init__(
        self,
        host: str,
        port: int,
        view: DaemonView,
        status: Callable[[], dict[str, Any]],
        registry: CollectorRegistry,
    ) -> None:
        self.host = host
        self.port = port
        self.view = view
        self._status = status
        self._registry = registry
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status_json)
        self._app = app

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = listening_port(runner)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _req: web.Request) -> web.Response:
        problems = self.view.problems()
        ready = self.view.ready
        return web.json_response(
            {"ready": ready, "problems": problems}, status=200 if ready else 503
        )

    async def _status_json(self, _req: web.Request) -> web.Response:
        return web.json_response(self._status())
