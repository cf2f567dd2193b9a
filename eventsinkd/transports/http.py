"""What the HTTP transports (webhook, otlp) share: one :class:`HttpClient` per sink, built
from its URL, ``tls`` and ``proxy``, and how an HTTP answer reads in a detail."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from eventsinkd import __version__
from eventsinkd.sinkconfig import OtlpSinkConfig, WebhookSinkConfig
from eventsinkd.transports.client import HttpClient, Response
from eventsinkd.transports.proxy import Proxy, ProxyError, choose
from eventsinkd.transports.tls import ssl_context

USER_AGENT = f"eventsinkd/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024  # of a response body: read (to keep the connection) at most this


def http_client(
    cfg: WebhookSinkConfig | OtlpSinkConfig,
    url: str,
    static_headers: Sequence[tuple[str, str]],
    *,
    keep_body: bool = False,
) -> HttpClient:
    """The sink's client for ``url``. A proxy from the environment that cannot be used does
    not stop the transport opening: every request then fails saying why (the sink pauses)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    proxy: Proxy | ProxyError | None
    try:
        proxy = choose(cfg.proxy, parts.scheme, parts.hostname or "", port)
    except ProxyError as exc:
        proxy = exc
    return HttpClient(
        url,
        static_headers,
        ssl_context=ssl_context(cfg.tls) if https else None,
        proxy=proxy,
        max_body=MAX_RESPONSE_BYTES,
        keep_body=keep_body,
        max_idle=cfg.max_requests,
    )


def status_detail(resp: Response) -> str:
    """``HTTP 503``; for a redirect (never followed) also where it pointed, without the
    Location's user:password or query (either may hold a secret)."""
    detail = f"HTTP {resp.status}"
    if 300 <= resp.status < 400:
        location = resp.header("Location")
        if location:
            parts = urlsplit(location.strip())
            where = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="")
            detail += f": a redirect to {where.geturl()[:200]} (redirects are not followed)"
        else:
            detail += ": a redirect (not followed)"
    return detail
