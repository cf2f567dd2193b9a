"""``type: webhook``: an HTTP POST per event (or per batch, CloudEvents batched mode),
signed as Standard Webhooks asks.

``format: standard-webhooks`` sends Nexus's body (shared/spec/events.md);
``format: cloudevents`` sends CloudEvents (:mod:`eventsinkd.transports.cloudevents`).
A templated ``url`` (its path and query) or header value is filled per event
(:mod:`eventsinkd.events.templates`); every request goes over the sink's one pool of
connections to the URL's origin. The Standard Webhooks signature, when the sink has a
secret, is over the exact body sent.

The POSTs go through :mod:`eventsinkd.transports.client`, the keep-alive HTTP/1.1
client of every HTTP sink (its docstring says why not aiohttp).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from eventsinkd.config.sinks import WebhookSinkConfig
from eventsinkd.events import Event
from eventsinkd.events.templates import Template, header_value, path_segment, query_value
from eventsinkd.transports.client import ProtocolError
from eventsinkd.transports.cloudevents import JSON, CloudEvents, batch_id
from eventsinkd.transports.contract import Attempt, Outcome, classify, parse_retry_after
from eventsinkd.transports.http import USER_AGENT, Poster, http_client, status_detail
from eventsinkd.transports.signing import sign


class WebhookTransport:
    def __init__(self, cfg: WebhookSinkConfig) -> None:
        self.cfg = cfg
        self.max_batch = cfg.batch_size  # 1 unless CloudEvents batched
        self._pool: Poster | None = None
        self._timeout_s = cfg.timeout_seconds
        self._detail_timeout = f"no answer within {cfg.timeout_seconds}s"
        self._ce = CloudEvents(cfg.cloudevents) if cfg.format == "cloudevents" else None
        self._binary = self._ce is not None and self._ce.mode == "binary"
        self._path: Template | None = None
        self._query: Template | None = None
        if cfg.url.templated:
            path, _, query = cfg.url.target_template.partition("?")
            self._path = Template(path, path_segment)
            self._query = Template(query, query_value) if query else None
        self._static_headers = []
        self._header_templates = []
        for name, value in cfg.headers.items():
            template = Template(value, header_value)
            if template.fields:
                self._header_templates.append((name, template))
            else:  # "{{" written for a brace: the value as it reads
                self._static_headers.append((name, template.fill("", {})))

    async def open(self) -> None:
        cfg = self.cfg
        content_type = self._ce.content_type if self._ce is not None else JSON
        static = [
            ("Content-Type", content_type),
            ("User-Agent", USER_AGENT),
            *self._static_headers,
        ]
        url = cfg.url.origin if cfg.url.templated else str(cfg.url)
        self._pool = http_client(cfg, url, static)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        if self.max_batch > 1:
            # One request; its outcome is each event's.
            assert self._ce is not None
            body = self._ce.batch(events, self.cfg.content)
            attempt = await self._post(batch_id(events), body, [], None)
            return [attempt] * len(events)
        # A loop, not a comprehension, and the request made here rather than in a method
        # per event: on Python 3.11 each is one more frame for every resumption of each
        # request's coroutine chain.
        results = []
        for event in events:
            body, headers, target = self.request(event)
            results.append(await self._post(event.id, body, headers, target))
        return results

    async def post(self, event: Event) -> Attempt:
        """POST ``event`` once; never raises for trouble with the receiver."""
        body, headers, target = self.request(event)
        return await self._post(event.id, body, headers, target)

    def request(self, event: Event) -> tuple[bytes, list[tuple[str, str]], str | None]:
        """``event``'s body, its own headers (ce- headers, templated ones) and its request
        target (None: the URL's own)."""
        content = self.cfg.content
        ce = self._ce
        headers: list[tuple[str, str]] = []
        if ce is None:
            body = event.body(content)
        elif self._binary:
            body = event.body(content)
            headers = ce.headers(event)
        else:
            body = ce.structured(event, content)
        for name, template in self._header_templates:
            headers.append((name, template.render(event)))
        target = None
        if self._path is not None:
            target = self._path.render(event)
            if self._query is not None:
                target += "?" + self._query.render(event)
        return body, headers, target

    async def _post(
        self, webhook_id: str, body: bytes, headers: list[tuple[str, str]], target: str | None
    ) -> Attempt:
        assert self._pool is not None, "transport not open"
        ts = int(time.time())
        headers.append(("webhook-id", webhook_id))
        headers.append(("webhook-timestamp", str(ts)))
        keys = self.cfg.signing_keys
        if keys:
            headers.append(("webhook-signature", sign(keys, webhook_id, ts, body)))
        try:
            resp = await self._pool.post(headers, body, self._timeout_s, target)
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
