"""``type: webhook``: one HTTP POST per event, signed as Standard Webhooks asks."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiohttp

from eventsinkd.delivery.outcome import Outcome, classify, parse_retry_after
from eventsinkd.delivery.signing import sign
from eventsinkd.events import Event
from eventsinkd.sinkconfig import WebhookSinkConfig
from eventsinkd.transports import Attempt
from eventsinkd.transports.http import USER_AGENT, HttpSession

MAX_RESPONSE_BYTES = 64 * 1024  # read (and discard) at most this much of a response body


class WebhookTransport:
    max_batch = 1

    def __init__(self, cfg: WebhookSinkConfig) -> None:
        self.cfg = cfg
        self._http = HttpSession(cfg)
        self._static_headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **cfg.headers,
        }

    async def open(self) -> None:
        await self._http.open()

    async def close(self) -> None:
        await self._http.close()

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        return [await self.post(event) for event in events]

    async def post(self, event: Event) -> Attempt:
        """POST ``event`` once; never raises for trouble with the receiver."""
        ts = int(time.time())
        body = event.body(self.cfg.content)
        headers = {**self._static_headers, "webhook-id": event.id, "webhook-timestamp": str(ts)}
        keys = self.cfg.signing_keys
        if keys:
            headers["webhook-signature"] = sign(keys, event.id, ts, body)
        try:
            async with self._http.session.post(
                str(self.cfg.url), data=body, headers=headers
            ) as resp:
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
