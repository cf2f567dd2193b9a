"""What the HTTP transports (webhook, otlp) share: one :class:`HttpClient` per sink, built
from its URL, ``tls``, ``proxy`` and ``auth``, and how an HTTP answer reads in a detail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias
from urllib.parse import urlsplit

from eventsinkd.common.secrets import SecretError
from eventsinkd.config.options import proxy_url
from eventsinkd.config.sinks import OtlpSinkConfig, WebhookSinkConfig
from eventsinkd.transports.auth import AuthPool, authorizer
from eventsinkd.transports.client import USER_AGENT, HttpClient, Response
from eventsinkd.transports.proxy import Proxy, ProxyError, choose
from eventsinkd.transports.tls import ssl_context

MAX_RESPONSE_BYTES = 64 * 1024  # of a response body: read (to keep the connection) at most this

# A sink's client: with ``auth``, every request carries its Authorization header.
Poster: TypeAlias = HttpClient | AuthPool


def http_client(
    cfg: WebhookSinkConfig | OtlpSinkConfig,
    url: str,
    static_headers: Sequence[tuple[str, str]],
    *,
    keep_body: bool = False,
) -> Poster:
    """The sink's client for ``url``. A proxy from the environment that cannot be used does
    not stop the transport opening: every request then fails saying why (the sink pauses).
    With ``auth`` (its secrets read now, so a reload reads them again), each request carries
    the Authorization header and a 401 is retried once with a fresh OAuth2 token."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    proxy: Proxy | ProxyError | None
    try:
        setting = cfg.proxy
        if setting is not None and setting.strip().lower() != "none":
            setting = proxy_url(setting)  # a reference is read again at each (re)load
        proxy = choose(setting, parts.scheme, parts.hostname or "", port)
    except ProxyError as exc:
        proxy = exc
    except SecretError as exc:  # its file went away since the config was checked
        proxy = ProxyError(f"proxy: {exc}")
    client = HttpClient(
        url,
        static_headers,
        ssl_context=ssl_context(cfg.tls) if https else None,
        proxy=proxy,
        max_body=MAX_RESPONSE_BYTES,
        keep_body=keep_body,
        max_idle=cfg.max_requests,
    )
    auth = authorizer(cfg.auth, cfg.tls, cfg.timeout_seconds)
    return client if auth is None else AuthPool(client, auth)


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


__all__ = ["USER_AGENT", "Poster", "http_client", "status_detail"]
