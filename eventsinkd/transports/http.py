"""What the HTTP transports (webhook, otlp) share: one aiohttp session per sink."""

from __future__ import annotations

import aiohttp

from eventsinkd import __version__
from eventsinkd.sinkconfig import OtlpSinkConfig, WebhookSinkConfig
from eventsinkd.transports.tls import ssl_context

USER_AGENT = f"eventsinkd/{__version__}"


class HttpSession:
    """A keep-alive session with at most ``max_requests`` connections, TLS for https URLs and
    ``timeout_seconds`` per request; opened by the transport's ``open()``."""

    def __init__(self, cfg: WebhookSinkConfig | OtlpSinkConfig) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        cfg = self.cfg
        https = cfg.url.scheme == "https"
        connector = aiohttp.TCPConnector(
            limit=cfg.max_requests, ssl=ssl_context(cfg.tls) if https else False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=cfg.timeout_seconds),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "transport not open"
        return self._session
