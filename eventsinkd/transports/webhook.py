"""``type: webhook``: one HTTP POST per event, signed as Standard Webhooks asks.

The POSTs go through :mod:`eventsinkd.transports.client`, the keep-alive HTTP/1.1
client of every HTTP sink (its docstring says why not aiohttp).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from eventsinkd.config.sinks import WebhookSinkConfig
from eventsinkd.events import Event
from eventsinkd.transports.client import ProtocolError
from eventsinkd.transports.contract import Attempt, Outcome, classify, parse_retry_after
from eventsinkd.transports.http import USER_AGENT, Poster, http_client, status_detail
from eventsinkd.transports.signing import sign


class WebhookTransport:
    max_batch = 1

    def __init__(self, cfg: WebhookSinkConfig) -> None:
        self.cfg = cfg
        self._pool: Poster | None = None
        self._timeout_s = cfg.timeout_seconds
        self._detail_timeout = f"no answer within {cfg.timeout_seconds}s"

    async def open(self) -> None:
        cfg = self.cfg
        static = [
            ("Content-Type", "application/json"),
            ("User-Agent", USER_AGENT),
            *cfg.headers.items(),
        ]
        self._pool = http_client(cfg, str(cfg.url), static)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        # A loop, not a comprehension: on Python 3.11 that is one more frame for every
        # resumption of each request's coroutine chain.
        results = []
        for event in events:
            results.append(await self.post(event))
        return results

    async def post(self, event: Event) -> Attempt:
        """POST ``event`` once; never raises for trouble with the receiver."""
        assert self._pool is not None, "transport not open"
        ts = int(time.time())
        body = event.body(self.cfg.content)
        headers = [("webhook-id", event.id), ("webhook-timestamp", str(ts))]
        keys = self.cfg.signing_keys
        if keys:
            headers.append(("webhook-signature", sign(keys, event.id, ts, body)))
        try:
            resp = await self._pool.post(headers, body, self._timeout_s)
        except TimeoutError:
            return Attempt(Outcome.TIMEOUT, None, self._detail_timeout)
        # Before ValueError: a certificate that fails verification is both (an
        # ssl.SSLCertVerificationError), and is the receiver's to fix, not the event's.
        except (OSError, ProtocolError) as exc:
            return Attempt(Outcome.CONNECTION, None, str(exc) or type(exc).__name__)
        except ValueError as exc:  # an id no HTTP header can carry: never deliverable
            return Attempt(Outcome.PERMANENT, None, str(exc))
        outcome = classify(resp.status)
        retry_after = None
        if outcome is Outcome.RETRY_STATUS:
            retry_after = parse_retry_after(resp.header("Retry-After"))
        return Attempt(outcome, retry_after, status_detail(resp))
