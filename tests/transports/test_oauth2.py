"""The OAuth2 token source on its own, against the RFC 6749 token endpoint of
tests/support/oauth2_server.py and raw aiohttp servers that answer wrongly (all real, on 127.0.0.1):
caching and early renewal, one token request at a time, and every failure a TokenError that
names the endpoint and holds no secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from oauth2_server import TokenServer

from eventsinkd.common.ports import free_port, listening_port
from eventsinkd.common.secrets import scrub
from eventsinkd.config.auth import OAuth2Auth
from eventsinkd.config.options import TlsConfig
from eventsinkd.transports.oauth2 import TOKENS_SCRUBBED, TokenError, TokenSource


def source(url: str, secret: str = "sec-ret", **kw: object) -> TokenSource:
    cfg = OAuth2Auth.model_validate(
        {"type": "oauth2", "token_url": url, "client_id": "c", "client_secret": secret, **kw}
    )
    return TokenSource(cfg, TlsConfig(), timeout_s=2)


async def test_token_is_cached_and_renewed_before_it_expires() -> None:
    server = await TokenServer("c", "sec-ret", lifetime_s=1).start()
    tokens = source(server.url)
    try:
        first = await tokens.token()
        assert await tokens.token() == first  # cached
        assert len(server.requests) == 1
        await asyncio.sleep(0.85)  # past 80 % of the 1 s lifetime, before it expires
        second = await tokens.token()
        assert second != first and len(server.requests) == 2
        assert server.valid(f"Bearer {second}")
        tokens.drop(first)  # an old token refused: the current one stays
        assert await tokens.token() == second and len(server.requests) == 2
        tokens.drop(second)  # the current one refused: a new one
        assert await tokens.token() not in (first, second)
    finally:
        await tokens.close()
        await server.stop()


async def test_one_token_request_at_a_time() -> None:
    server = await TokenServer("c", "sec-ret", lifetime_s=60).start()
    tokens = source(server.url)
    try:
        got = await asyncio.gather(*(tokens.token() for _ in range(50)))
        assert len(set(got)) == 1
        assert len(server.requests) == 1
    finally:
        await tokens.close()
        await server.stop()


@asynccontextmanager
async def answering(status: int, body: bytes) -> AsyncIterator[str]:
    async def handle(_req: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/token", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{listening_port(runner)}/token"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, b"oops", "answered HTTP 500"),
        (400, b'{"error": "invalid_scope"}', "answered HTTP 400 (invalid_scope)"),
        (200, b"not json", "answered 200 without an access_token"),
        (200, b'{"token_type": "bearer"}', "answered 200 without an access_token"),
        (200, b'{"access_token": 5}', "answered 200 without an access_token"),
        (200, b'{"access_token": "abcdefgh", "token_type": "mac"}', "other than Bearer"),
    ],
)
async def test_a_bad_answer_is_a_token_error(status: int, body: bytes, expected: str) -> None:
    async with answering(status, body) as url:
        tokens = source(url + "?key=QUERYSECRET", secret="CLIENTSECRET")
        try:
            with pytest.raises(TokenError) as info:
                await tokens.token()
        finally:
            await tokens.close()
    message = str(info.value)
    assert expected in message and "/token?key=***" in message, message
    assert "CLIENTSECRET" not in message and "QUERYSECRET" not in message
    assert isinstance(info.value, ConnectionError)  # a connection failure for the sink


async def test_an_endpoint_that_is_not_there_is_a_token_error() -> None:
    tokens = source(f"http://127.0.0.1:{free_port()}/token")
    try:
        with pytest.raises(TokenError, match="cannot be reached"):
            await tokens.token()
    finally:
        await tokens.close()


async def test_wrong_client_secret_names_the_rfc_error() -> None:
    server = await TokenServer("c", "right", lifetime_s=60).start()
    for how in ("basic", "post"):
        tokens = source(server.url, secret="wrong-secret", client_auth=how)
        try:
            with pytest.raises(TokenError, match=r"answered HTTP 401 \(invalid_client\)"):
                await tokens.token()
        finally:
            await tokens.close()
    assert [r.client_auth for r in server.requests] == ["basic", "post"]
    await server.stop()


async def test_only_the_last_few_tokens_are_kept_for_scrubbing() -> None:
    """Every token is blanked out of logs while it may still show; a long run of short-lived
    tokens does not pile up in the set of secrets every log line is scrubbed against."""
    server = await TokenServer("c", "sec-ret", lifetime_s=60).start()
    tokens = source(server.url)
    issued = []
    try:
        for _ in range(TOKENS_SCRUBBED + 3):
            issued.append(await tokens.token())
            tokens.drop(issued[-1])  # refused: the next call fetches a new one
    finally:
        await tokens.close()
        await server.stop()
    kept = issued[-TOKENS_SCRUBBED:]
    assert all(scrub(f"Bearer {t}") == "Bearer ***" for t in kept)
    assert all(scrub(f"Bearer {t}") == f"Bearer {t}" for t in issued[:-TOKENS_SCRUBBED])
