"""One webhook attempt: the HTTP session, headers, Standard Webhooks signature, and its outcome."""

from __future__ import annotations

import ssl
import time
from typing import NamedTuple

import aiohttp

from eventsinkd import __version__
from eventsinkd.config import SinkConfig, TlsConfig
from eventsinkd.delivery.outcome import Outcome, classify, parse_retry_after
from eventsinkd.delivery.signing import sign
from eventsinkd.events import Event

USER_AGENT = f"eventsinkd/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024  # read (and discard) at most this much of a response body


class Attempt(NamedTuple):
    outcome: Outcome
    retry_after: float | None  # seconds the receiver asked us to wait (Retry-After)
    detail: str  # for logs, /status and dead letters: "HTTP 503", "connection refused"...


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


class WebhookClient:
    def __init__(self, cfg: SinkConfig) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._static_headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **cfg.headers,
        }

    async def open(self) -> None:
        https = self.cfg.url.scheme == "https"
        connector = aiohttp.TCPConnector(
            limit=self.cfg.concurrency, ssl=ssl_context(self.cfg.tls) if https else False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_seconds),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, event: Event) -> Attempt:
        """POST ``event`` once; never raises for trouble with the receiver."""
        assert self._session is not None, "client not open"
        ts = int(time.time())
        body = event.body(self.cfg.content)
        headers = {**self._static_headers, "webhook-id": event.id, "webhook-timestamp": str(ts)}
        keys = self.cfg.signing_keys
        if keys:
            headers["webhook-signature"] = sign(keys, event.id, ts, body)
        try:
            async with self._session.post(str(self.cfg.url), data=body, headers=headers) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)
                outcome = classify(resp.status)
                retry_after = None
                if outcome is Outcome.RETRY_STATUS:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                return Attempt(outcome, retry_after, f"HTTP {resp.status}")
        except TimeoutError:
            detail = f"no answer within {self.cfg.timeout_seconds}s"
            return Attempt(Outcome.TIMEOUT, None, detail)
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(Outcome.CONNECTION, None, str(exc) or type(exc).__name__)
