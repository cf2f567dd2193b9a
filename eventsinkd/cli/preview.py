"""``eventsinkd tail --sink NAME``: what one configured sink would send for each event, with
its filter, format, templates and transform applied, one JSON object per line.

Each line has the event's ``id``, then either ``"filtered": true`` (the transform gave
``empty`` or ``null``), ``"dead_letter": "<why>"`` (the transform failed on it), or what
would go out: for a webhook sink the request's ``url`` (a URL given as a secret reference
is shown as the reference and its host, without the rendered path; query values as
``***``), the headers eventsinkd computes per event (``ce-*``, ``Content-Type``; the
configured headers are never shown) and the ``body``; for a NATS sink the ``subject`` and
``body``; for the other types the ``body``. The body is the exact bytes the sink sends
(CloudEvents batched mode: the element of the array this event is).
"""

from __future__ import annotations

from typing import Any

import orjson

from eventsinkd.common.secrets import is_reference, redact_url
from eventsinkd.config.options import FilterConfig
from eventsinkd.config.sinks import NatsSinkConfig, SinkConfig, WebhookSinkConfig
from eventsinkd.delivery.filters import EventFilter
from eventsinkd.delivery.replay import apply_transform
from eventsinkd.events import Event
from eventsinkd.transports.cloudevents import JSON, CloudEvents
from eventsinkd.transports.nats_subjects import SubjectTemplate
from eventsinkd.transports.webhook import WebhookTransport
from eventsinkd.wal.entry import Entry


class SinkPreview:
    def __init__(self, cfg: SinkConfig) -> None:
        self.cfg = cfg
        self._filter = EventFilter(cfg.filter) if cfg.filter != FilterConfig() else None
        self._transform = cfg.transformer
        fmt = getattr(cfg, "format", "standard-webhooks")
        self._ce = (
            CloudEvents(cfg.cloudevents)
            if isinstance(cfg, WebhookSinkConfig | NatsSinkConfig) and fmt == "cloudevents"
            else None
        )
        self._subjects = SubjectTemplate(cfg.subject) if isinstance(cfg, NatsSinkConfig) else None
        # A webhook's requests as its transport makes them (never opened here).
        self._webhook = WebhookTransport(cfg) if isinstance(cfg, WebhookSinkConfig) else None

    def line(self, kind: str, entry: Entry) -> bytes | None:
        """The line for ``entry``'s event ``kind``; None when the sink's filter leaves it out."""
        if self._filter is not None and not self._filter.matches(kind, entry):
            return None
        cfg = self.cfg
        event = Event(kind, entry, (cfg.content,))
        out: dict[str, Any] = {"id": event.id}
        if self._transform is not None:
            shaped = apply_transform(self._transform, cfg.content, event)
            if isinstance(shaped, str):
                out["dead_letter"] = shaped
                return orjson.dumps(out) + b"\n"
            if shaped is None:
                out["filtered"] = True
                return orjson.dumps(out) + b"\n"
            event.shaped = shaped
        body = event.body(cfg.content)
        ce = self._ce
        if self._webhook is not None:
            body, own, target = self._webhook.request(event)
            out["url"] = self._url(target)
            headers = {"Content-Type": JSON if ce is None else ce.content_type}
            # ce- headers only: the configured ones (templated or not) may be credentials.
            headers.update((name, value) for name, value in own if name.startswith("ce-"))
            out["headers"] = headers
        elif self._subjects is not None:
            out["subject"] = self._subjects.render(event)
            if ce is not None:
                body = ce.structured(event, cfg.content)
        out["body"] = orjson.Fragment(body)
        return orjson.dumps(out) + b"\n"

    def _url(self, target: str | None) -> str:
        assert isinstance(self.cfg, WebhookSinkConfig)
        url = self.cfg.url
        if is_reference(url.ref):
            return url.shown  # its path may be the secret (Slack's)
        if target is None:
            return redact_url(str(url))
        return redact_url(url.origin.rstrip("/") + target)
