"""Which HTTP proxy (if any) carries an HTTP sink's requests.

A sink's ``proxy:`` decides: ``none`` (no proxy, whatever the environment says), an
``http://[user:password@]host:port`` URL, or nothing, which means the environment, read
as curl reads it:

* ``https_proxy`` / ``HTTPS_PROXY`` for https URLs, ``http_proxy`` / ``HTTP_PROXY`` for
  http URLs (lower case first); unlike curl, upper-case ``HTTP_PROXY`` is honoured too
  (curl ignores it because of the CGI "httpoxy" hole; a daemon has no CGI environment).
  ``all_proxy`` / ``ALL_PROXY`` is the fallback. A value without a scheme is ``http://``;
* ``no_proxy`` / ``NO_PROXY``: a comma-separated list of host names, domains (``a.com``
  and ``.a.com`` both match ``a.com`` and every name under it), IP addresses, CIDR
  ranges (``10.0.0.0/8``, ``fd00::/8``), optionally ``:port``; ``*`` alone bypasses the
  proxy for every host. Loopback addresses are **not** exempt unless listed, as with curl.

Only ``http://`` proxies are supported (HTTPS is tunnelled through them with CONNECT).
Selection is plain string and address matching, written here because no maintained
library reads these variables as curl does (urllib's ``proxy_bypass`` has no CIDR and
consults the platform's settings).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from eventsinkd.config.proxy import Proxy, parse_proxy_url

__all__ = ["Proxy", "ProxyError", "bypass", "choose", "parse_proxy_url"]


class ProxyError(ConnectionError):
    """The proxy refused or did not answer: a connection failure (the sink pauses, probes)."""


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return key, value
    return None


def choose(
    setting: str | None,
    scheme: str,
    host: str,
    port: int,
    environ: Mapping[str, str] | None = None,
) -> Proxy | None:
    """The proxy for requests to ``scheme://host:port``; None: connect directly.

    Raises ValueError (ProxyError for an unusable environment value, so that the sink
    fails, pauses and says why, rather than quietly going around the proxy)."""
    if setting is not None:
        return None if setting.strip().lower() == "none" else parse_proxy_url(setting)
    env = os.environ if environ is None else environ
    found = _env(env, f"{scheme}_proxy") or _env(env, "all_proxy")
    if found is None:
        return None
    no_proxy = _env(env, "no_proxy")
    if no_proxy is not None and bypass(no_proxy[1], host, port):
        return None
    key, value = found
    try:
        return parse_proxy_url(value, key)
    except ValueError as exc:
        raise ProxyError(f"{key} cannot be used: {exc}") from None


def bypass(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``host:port`` matches a ``NO_PROXY`` list (as curl reads it)."""
    host = host.lower().rstrip(".").strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry, want_port = _split_port(entry)
        if want_port is not None and want_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` / ``[v6]:port`` / ``v6`` / ``cidr`` -> (entry, port or None)."""
    if entry.startswith("["):
        inner, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inner, int(port) if port.isascii() and port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isascii() and port.isdigit():
            return name, int(port)
    return entry, None
