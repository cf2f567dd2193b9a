"""The ``Authorization`` header of an HTTP sink's requests (``auth:``), added above the HTTP
client: :class:`Authorizer` gives the header and is told of a 401; :class:`AuthPool` wraps a
sink's HTTP client with it, retrying a request refused with 401 once with a fresh
OAuth2 token (so a token that expired on the way never makes a dead letter).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from eventsinkd.common.secrets import remember, resolve_secret
from eventsinkd.config.auth import BasicAuth, BearerAuth, OAuth2Auth
from eventsinkd.config.options import TlsConfig
from eventsinkd.transports.client import HttpClient, Response
from eventsinkd.transports.oauth2 import TokenError, TokenSource

__all__ = ["AuthPool", "Authorizer", "TokenError", "authorizer"]


class Authorizer:
    """One sink's credentials; static (basic, bearer) or an OAuth2 token source."""

    def __init__(self, static: str | None = None, tokens: TokenSource | None = None) -> None:
        self._static = static
        self.tokens = tokens

    async def header(self) -> str:
        """The Authorization value for the next request; raises :class:`TokenError`."""
        if self.tokens is not None:
            return "Bearer " + await self.tokens.token()
        assert self._static is not None
        return self._static

    def refused(self, header: str) -> bool:
        """The receiver answered 401 to ``header``: True if trying again may get another."""
        if self.tokens is None:
            return False  # a static credential would be refused again
        return self.tokens.drop(header.removeprefix("Bearer "))

    async def close(self) -> None:
        if self.tokens is not None:
            await self.tokens.close()


def authorizer(
    auth: BasicAuth | BearerAuth | OAuth2Auth | None, tls: TlsConfig, timeout_s: float
) -> Authorizer | None:
    """The Authorizer for a sink's ``auth`` (secrets read now: a reload reads them again)."""
    if auth is None:
        return None
    if auth.type == "basic":
        password = resolve_secret(auth.password)
        pair = base64.b64encode(f"{auth.user}:{password}".encode()).decode()
        remember(pair)
        return Authorizer(static="Basic " + pair)
    if auth.type == "bearer":
        return Authorizer(static="Bearer " + resolve_secret(auth.token))
    return Authorizer(tokens=TokenSource(auth, tls, timeout_s))


class AuthPool:
    """An :class:`HttpClient` whose requests carry the sink's Authorization header."""

    def __init__(self, pool: HttpClient, auth: Authorizer) -> None:
        self._pool = pool
        self._auth = auth

    async def post(
        self,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout_s: float,
        target: str | None = None,
    ) -> Response:
        """As :meth:`HttpClient.post`; a token endpoint's failure is a :class:`TokenError`
        (a ConnectionError)."""
        auth = self._auth
        pool = self._pool
        value = await auth.header()
        resp = await pool.post([*headers, ("Authorization", value)], body, timeout_s, target)
        if resp.status == 401 and auth.refused(value):
            value = await auth.header()
            resp = await pool.post([*headers, ("Authorization", value)], body, timeout_s, target)
        return resp

    async def close(self) -> None:
        await self._pool.close()
        await self._auth.close()
