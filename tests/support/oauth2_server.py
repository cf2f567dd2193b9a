"""An OAuth 2.0 token endpoint written to RFC 6749 for the tests, and a check of the tokens
it issued, for receivers that want them.

A real aiohttp server on 127.0.0.1 implementing the client credentials grant (§4.4):
``POST /token`` with ``application/x-www-form-urlencoded`` fields, the client authenticated
either by HTTP Basic with the form-urlencoded id and secret (§2.3.1, the default) or by
``client_id``/``client_secret`` in the body (§2.3.1, "post"), never both (§2.3). Success is
§5.1 (``access_token``, ``token_type`` Bearer, ``expires_in``, ``Cache-Control: no-store``);
errors are §5.2 (``invalid_request``, ``invalid_client`` with 401 and ``WWW-Authenticate``
when Basic was used, ``unsupported_grant_type``). Every token expires ``lifetime_s`` after
it is issued, unless ``revoke_after_s`` makes it invalid sooner than it said (a server that
revokes tokens early: the client only learns it from a 401). ``fail_status`` makes it answer
that status instead (a token endpoint in trouble).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web

from eventsinkd.common.ports import listening_port


@dataclass
class TokenRequest:
    client_auth: str  # basic | post
    client_id: str
    client_secret: str
    form: dict[str, str]
    at: float


@dataclass
class TokenServer:
    client_id: str
    client_secret: str
    lifetime_s: int = 2
    fail_status: int | None = None
    revoke_after_s: float | None = None
    requests: list[TokenRequest] = field(default_factory=list)
    issued: dict[str, float] = field(default_factory=dict)  # token -> monotonic expiry
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def valid(self, authorization: str | None) -> bool:
        """True if ``authorization`` is ``Bearer <a token issued here, not expired>``."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expiry = self.issued.get(authorization[len("Bearer ") :])
        return expiry is not None and time.monotonic() < expiry

    @staticmethod
    def _error(status: int, error: str, basic: bool = False) -> web.Response:
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if basic:  # §5.2: 401 with the scheme the client used
            headers["WWW-Authenticate"] = 'Basic realm="token"'
        return web.json_response({"error": error}, status=status, headers=headers)

    async def _token(self, req: web.Request) -> web.Response:
        if self.fail_status is not None:
            return web.json_response({"error": "temporarily_unavailable"}, status=self.fail_status)
        if req.content_type != "application/x-www-form-urlencoded":
            return self._error(400, "invalid_request")
        form = {k: str(v) for k, v in (await req.post()).items()}
        header = req.headers.get("Authorization", "")
        if header.startswith("Basic "):
            if "client_secret" in form:  # §2.3: one method per request
                return self._error(400, "invalid_request")
            try:
                pair = base64.b64decode(header[6:], validate=True).decode()
            except ValueError:
                return self._error(401, "invalid_client", basic=True)
            cid, _, csecret = pair.partition(":")
            cid, csecret, how = unquote(cid), unquote(csecret), "basic"
        else:
            cid, csecret, how = form.get("client_id", ""), form.get("client_secret", ""), "post"
        self.requests.append(TokenRequest(how, cid, csecret, form, time.monotonic()))
        if form.get("grant_type") != "client_credentials":
            return self._error(400, "unsupported_grant_type")
        if (cid, csecret) != (self.client_id, self.client_secret):
            return self._error(401, "invalid_client", basic=how == "basic")
        token = secrets.token_urlsafe(24)
        self.issued[token] = time.monotonic() + (self.revoke_after_s or self.lifetime_s)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime_s},
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = listening_port(self._runner)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
