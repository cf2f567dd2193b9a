"""``eventsinkd receive``: a webhook receiver that checks signatures and prints what arrives.

For operators testing a config, and the receiving end of ``eventsinkd demo``.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import TextIO

import orjson
from aiohttp import web

from eventsinkd.common.ports import listening_port
from eventsinkd.transports.signing import verify


class Receiver:
    def __init__(self, keys: list[bytes], out: TextIO | None = sys.stdout) -> None:
        self.keys = keys
        self.out = out
        self.received: Counter[str] = Counter()  # webhook-id -> deliveries
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
