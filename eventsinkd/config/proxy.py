"""An HTTP sink's ``proxy:`` URL, read: ``http://[user:password@]host[:port]``. Which proxy a
request takes (the setting or the environment) is :mod:`eventsinkd.transports.proxy`'s."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # a Proxy-Authorization value (Basic), from the URL's user:password
    source: str  # where it came from, for messages: "proxy:" or "HTTPS_PROXY"

    @property
    def where(self) -> str:
        """host:port, never the credentials: what messages show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_proxy_url(url: str, source: str = "proxy:") -> Proxy:
    """An ``http://[user:password@]host[:port]`` proxy. ValueError says what is wrong,
    without the URL (it may hold a password)."""
    if "://" not in url:
        url = "http://" + url  # as curl reads a bare host:port
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise ValueError(
            f"a proxy must be http://host:port (with user:password@ if it needs them), "
            f"not {parts.scheme}://"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the proxy's port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError("the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("give a proxy as http://host:port, with no path or query")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return Proxy(
        parts.hostname.lower(), 1080 if port is None else port, auth, source
    )  # curl's default
