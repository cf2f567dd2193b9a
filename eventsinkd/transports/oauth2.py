"""OAuth 2.0 client credentials (RFC 6749 §4.4): one sink's access token, fetched, cached and
renewed before it expires.

The token request goes through aiohttp's client (a rare request, so its cost does not
matter), with the sink's ``tls`` options and ``trust_env=True`` so ``HTTPS_PROXY`` and
friends apply. One request at a time per sink: callers that find no valid token wait for
the one fetch under way. Anything wrong with the token endpoint (no connection, a status
that is not 2xx, a body that is not a token response) raises :class:`TokenError`, a
``ConnectionError``: the sink counts it as a connection failure, pauses and probes. Neither
the token nor the client secret ever appears in a message.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from eventsinkd.common.secrets import forget, remember, resolve_secret
from eventsinkd.config.auth import OAuth2Auth
from eventsinkd.config.options import TlsConfig
from eventsinkd.transports.client import USER_AGENT
from eventsinkd.transports.tls import ssl_context

RENEW_MARGIN_S = 30.0  # renew this long before expiry...
RENEW_FRACTION = 0.2  # ...or this share of the lifetime before it, whichever is shorter
MAX_TOKEN_RESPONSE = 64 * 1024
# Tokens kept out of logs: the current one and the few before it (a request may still
# carry one); older ones are forgotten, or a long run of short-lived tokens would pile up.
TOKENS_SCRUBBED = 4


class TokenError(ConnectionError):
    """The token endpoint gave no usable token; the message names the endpoint, no secret."""


class TokenSource:
    """The access token of one sink."""

    def __init__(self, cfg: OAuth2Auth, tls: TlsConfig, timeout_s: float) -> None:
        self.cfg = cfg
        self._tls = tls
        self._timeout_s = timeout_s
        self._secret = resolve_secret(cfg.client_secret)  # read when the sink starts
        self._token: str | None = None
        self._renew_at = 0.0  # monotonic
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # token requests made (for tests and logs)
        self._issued: deque[str] = deque()  # tokens remembered for scrubbing, oldest first

    def _valid(self) -> str | None:
        if self._token is not None and time.monotonic() < self._renew_at:
            return self._token
        return None

    async def token(self) -> str:
        """A token that has not reached its renewal time; fetched if there is none."""
        token = self._valid()
        if token is not None:
            return token
        async with self._lock:  # one token request at a time
            token = self._valid()
            if token is None:
                token = await self._fetch()
            return token

    def drop(self, token: str) -> bool:
        """The receiver refused ``token`` (401): forget it, unless a newer one replaced it
        meanwhile. True: a retry with :meth:`token` may succeed."""
        if self._token == token:
            self._token = None
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _where(self) -> str:
        return f"the token endpoint {self.cfg.token_url.shown}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            url = self.cfg.token_url
            ssl = ssl_context(self._tls) if url.scheme == "https" else False
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1, ssl=ssl),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                trust_env=True,
            )
        return self._session

    def _request(self) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers of a token request (RFC 6749 §4.4.2, client auth §2.3.1)."""
        cfg = self.cfg
        form = {"grant_type": "client_credentials", **cfg.params}
        if cfg.scope_text:
            form["scope"] = cfg.scope_text
        if cfg.audience:
            form["audience"] = cfg.audience
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if cfg.client_auth == "basic":
            # §2.3.1: id and secret are form-urlencoded before they are joined and encoded.
            pair = f"{quote(cfg.client_id, safe='')}:{quote(self._secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = cfg.client_id
            form["client_secret"] = self._secret
        return form, headers

    async def _fetch(self) -> str:
        self.requests += 1
        form, headers = self._request()
        started = time.monotonic()
        try:
            async with self._http().post(
                str(self.cfg.token_url), data=form, headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.content.read(MAX_TOKEN_RESPONSE + 1)
                status = resp.status
        except TimeoutError:
            raise TokenError(f"{self._where()} gave no answer within {self._timeout_s}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TokenError(
                f"{self._where()} cannot be reached: {type(exc).__name__}: {exc}"
            ) from None
        doc = _json(body)
        if not 200 <= status < 300:
            error = doc.get("error") if doc else None
            code = f" ({error})" if isinstance(error, str) and error.isprintable() else ""
            raise TokenError(f"{self._where()} answered HTTP {status}{code}")
        token = doc.get("access_token") if doc else None
        if not isinstance(token, str) or not token:
            raise TokenError(f"{self._where()} answered {status} without an access_token")
        kind = doc.get("token_type", "bearer") if doc else "bearer"
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise TokenError(f"{self._where()} gave a token of a type other than Bearer")
        remember(token)
        self._issued.append(token)
        if len(self._issued) > TOKENS_SCRUBBED:  # an old token no longer shows anywhere
            forget(self._issued.popleft())
        lifetime = _seconds(doc.get("expires_in") if doc else None)
        if lifetime is None:  # no expiry given: kept until the receiver refuses it (401)
            self._renew_at = float("inf")
        else:
            self._renew_at = started + lifetime - min(RENEW_MARGIN_S, lifetime * RENEW_FRACTION)
        self._token = token
        return token


def _json(body: bytes) -> dict[str, Any] | None:
    if len(body) > MAX_TOKEN_RESPONSE:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _seconds(value: object) -> float | None:
    """``expires_in`` (RFC 6749 §5.1: seconds); some servers send it as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 0:
        return float(value)
    return None
