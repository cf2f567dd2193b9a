"""``auth:`` of HTTP sinks against real servers on 127.0.0.1: basic and bearer headers, OAuth2
client credentials against the RFC 6749 token endpoint of tests/support/oauth2_server.py (tokens
that expire every 2 s, a receiver that answers 401 to an expired one), a token endpoint in
trouble pausing the sink, and secrets rotated in their files taking effect on SIGHUP. The real
daemon runs as a subprocess; nothing is mocked."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from daemon_harness import (
    Daemon,
    accounting,
    expected_ids,
    metric_value,
    received_all,
    sink_status,
    until,
    until_metric,
    until_status,
)
from oauth2_server import TokenServer
from standardwebhooks.webhooks import Webhook

from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.devtools.peers.otlp import OK, Answer, OtlpPeer
from eventsinkd.devtools.peers.otlp import Request as OtlpRequest
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter


def whsec(seed: bytes) -> str:
    return "whsec_" + base64.b64encode(seed * (32 // len(seed) + 1))[:43].decode() + "="


async def trickle(w: NexusWriter, seconds: float, per_tick: int = 2, tick_s: float = 0.1) -> None:
    """Append ``per_tick`` entries every ``tick_s`` for ``seconds``: a steady writer."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        w.append(per_tick)
        await asyncio.sleep(tick_s)


# -- configuration --------------------------------------------------------------------


def refusal(auth: str, url: str = "http://x/") -> list[str]:
    text = (
        f"wal: {{dir: /w}}\nevents:\n  sinks:\n    - name: a\n      url: '{url}'\n"
        f"      auth: {auth}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("c.yaml"))
    return info.value.problems


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ("{type: digest, password: hunter2-x}", "events.sinks[0].auth.type (line 6): unknown"),
        ("{password: hunter2-x}", "events.sinks[0].auth.type (line 6): unknown or missing"),
        ("{type: basic, password: hunter2-x}", "events.sinks[0].auth.user (line 6): required"),
        ("{type: bearer}", "events.sinks[0].auth.token (line 6): required key is missing"),
        ("{type: bearer, token: t, user: u}", "events.sinks[0].auth.user (line 6): unknown key"),
        (
            "{type: oauth2, token_url: 'http://t/?k=hunter2-x', client_id: c}",
            "events.sinks[0].auth.client_secret (line 6): required key is missing",
        ),
        (
            "{type: oauth2, token_url: 'ftp://u:hunter2-x@t/', client_id: c, client_secret: s}",
            "events.sinks[0].auth.token_url (line 6): must start with https:// or http://",
        ),
        (
            "{type: oauth2, token_url: 'http://t/', client_id: c, client_secret: s, "
            "params: {grant_type: password}}",
            "events.sinks[0].auth.params (line 6): grant_type are set by eventsinkd",
        ),
        (
            "{type: bearer, token: t}\n      headers: {authorization: hunter2-x}",
            "events.sinks[0] (line 4): give the credentials either in auth or in an Authorization",
        ),
        (
            "{type: bearer, token: 'env:EVENTSINKD_TEST_UNSET_VAR'}",
            "events.sinks[0].auth.token (line 6): environment variable "
            "EVENTSINKD_TEST_UNSET_VAR is not set",
        ),
    ],
)
def test_refused_auth_names_key_and_line(auth: str, expected: str) -> None:
    problems = refusal(auth)
    assert any(expected in p for p in problems), problems
    assert "hunter2-x" not in "\n".join(problems)


def test_auth_and_url_credentials_are_refused_together() -> None:
    problems = refusal("{type: bearer, token: t}", url="http://u:hunter2-x@x/")
    expected = "events.sinks[0] (line 4): give the credentials either in auth or in the url"
    assert any(expected in p for p in problems), problems
    assert "hunter2-x" not in "\n".join(problems)


# -- basic and bearer -----------------------------------------------------------------


async def test_basic_and_bearer_send_their_header(
    tmp_path: Path, new_daemon: Callable[..., Daemon]
) -> None:
    hook = await WebhookServer().start()
    collector = await OtlpPeer().start()
    (tmp_path / "pw").write_text("s3cret:pw-with-colon\n")
    sinks = [
        {
            "name": "basic",
            "url": hook.url,
            "auth": {"type": "basic", "user": "nexus", "password": f"file:{tmp_path / 'pw'}"},
        },
        {"name": "bearer", "url": hook.url, "auth": {"type": "bearer", "token": "env:HOOK_TOK"}},
        {
            "name": "otlp",
            "type": "otlp",
            "url": collector.url,
            "auth": {"type": "bearer", "token": "literal-otlp-token"},
        },
    ]
    d = new_daemon(sinks)
    w = NexusWriter(d.wal, precreate=False)
    w.append(5)
    try:
        await d.start(env={**os.environ, "HOOK_TOK": "tok-from-env"})
        await until(lambda: len(hook.requests) >= 10)
        await collector.wait_for_records(expected_ids(w))
        basic = "Basic " + base64.b64encode(b"nexus:s3cret:pw-with-colon").decode()
        seen = {r.headers["Authorization"] for r in hook.requests}
        assert seen == {basic, "Bearer tok-from-env"}
        assert sum(r.headers["Authorization"] == basic for r in hook.requests) == 5
        assert {r.headers["Authorization"] for r in collector.requests} == {
            "Bearer literal-otlp-token"
        }
    finally:
        assert await d.stop() == 0
        await hook.stop()
        await collector.stop()


# -- OAuth2 ----------------------------------------------------------------------------


def guarded(
    tokens: TokenServer, accepted: set[str], refused: list[str] | None = None
) -> Callable[..., Any]:
    """A webhook receiver behaviour: 401 unless the request carries a valid token."""

    async def behaviour(_n: int, req: web.Request) -> web.StreamResponse:
        if not tokens.valid(req.headers.get("Authorization")):
            if refused is not None:
                refused.append(req.headers["webhook-id"])
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        accepted.add(req.headers["webhook-id"])
        return web.Response(status=204)

    return behaviour


async def test_oauth2_tokens_expiring_every_2s_lose_nothing(
    new_daemon: Callable[..., Daemon],
) -> None:
    # Tokens say 2 s but stop working after 1.2 s: a request may meet a 401 before renewal.
    hook_tokens = await TokenServer(
        "hook-client", "hook:secret/&=", lifetime_s=2, revoke_after_s=1.2
    ).start()
    otlp_tokens = await TokenServer(
        "otlp-client", "otlp-secret", lifetime_s=2, revoke_after_s=1.2
    ).start()
    accepted: set[str] = set()
    refused: list[str] = []
    hook = await WebhookServer(behaviour=guarded(hook_tokens, accepted, refused)).start()

    otlp_refused: list[int] = []

    async def otlp_guard(n: int, req: OtlpRequest) -> Answer:
        if otlp_tokens.valid(req.headers.get("Authorization")):
            return OK
        otlp_refused.append(n)
        return Answer(status=401)

    collector = await OtlpPeer(behaviour=otlp_guard).start()
    sinks = [
        {
            "name": "hook",
            "url": hook.url,
            "auth": {
                "type": "oauth2",
                "token_url": hook_tokens.url,
                "client_id": "hook-client",
                "client_secret": "hook:secret/&=",  # needs form-urlencoding under Basic
                "scope": ["events.write", "events.read"],
                "audience": "https://api.example",
                "params": {"resource": "nexus"},
            },
        },
        {
            "name": "otlp",
            "type": "otlp",
            "url": collector.url,
            "max_batch": 20,
            "auth": {
                "type": "oauth2",
                "token_url": otlp_tokens.url,
                "client_id": "otlp-client",
                "client_secret": "otlp-secret",
                "client_auth": "post",
            },
        },
    ]
    d = new_daemon(sinks)
    w = NexusWriter(d.wal, precreate=False)
    try:
        await d.start()
        t0 = time.monotonic()
        await trickle(w, 9.0)
        run_s = time.monotonic() - t0
        want = expected_ids(w)
        await until(lambda: accepted >= want, 60)
        await collector.wait_for_records(want)
        for name in ("hook", "otlp"):
            delivered, failed, dropped = await accounting(d, name)
            assert (failed, dropped) == (0, 0), name
            assert delivered == len(want), name
            assert (await sink_status(d, name))["dead_letters"] == 0
        assert refused and otlp_refused  # 401s happened, were retried, and cost no event
        # Tokens are reused while valid: about one request per 2 s lifetime (renewed a little
        # early), not one per event (~180) or per request.
        for tokens in (hook_tokens, otlp_tokens):
            assert run_s / 2 * 0.5 <= len(tokens.requests) <= run_s / 2 * 2 + 3, (
                len(tokens.requests),
                run_s,
            )
        # client_auth basic (the default): the form-urlencoded pair in a Basic header (§2.3.1)
        first = hook_tokens.requests[0]
        assert first.client_auth == "basic" and first.client_secret == "hook:secret/&="
        assert first.form == {
            "grant_type": "client_credentials",
            "scope": "events.write events.read",
            "audience": "https://api.example",
            "resource": "nexus",
        }
        # client_auth post: the credentials in the form, no Authorization header
        assert {r.client_auth for r in otlp_tokens.requests} == {"post"}
        assert otlp_tokens.requests[0].form == {
            "grant_type": "client_credentials",
            "client_id": "otlp-client",
            "client_secret": "otlp-secret",
        }
        log = d.log.read_text()
        for token in [*hook_tokens.issued, *otlp_tokens.issued, "hook:secret/&=", "otlp-secret"]:
            assert token not in log
    finally:
        assert await d.stop() == 0
        for server in (hook, collector, hook_tokens, otlp_tokens):
            await server.stop()


async def test_failing_token_endpoint_pauses_the_sink(new_daemon: Callable[..., Daemon]) -> None:
    tokens = await TokenServer("c", "client-secret-xyz", lifetime_s=60, fail_status=503).start()
    accepted: set[str] = set()
    hook = await WebhookServer(behaviour=guarded(tokens, accepted)).start()
    auth = {"type": "oauth2", "token_url": tokens.url, "client_id": "c"}
    d = new_daemon([{"name": "s", "url": hook.url, "auth": {**auth, "client_secret": "env:CS"}}])
    w = NexusWriter(d.wal, precreate=False)
    w.append(5)
    try:
        await d.start(env={**os.environ, "CS": "client-secret-xyz"})
        doc = await until_status(
            d, lambda s: s["sinks"]["s"]["paused_since"] is not None, what="paused"
        )
        error = doc["sinks"]["s"]["last_error"]
        assert f"the token endpoint {tokens.url} answered HTTP 503" in error, error
        assert hook.requests == []  # nothing went out without a token
        assert metric_value(await d.get("/metrics"), "eventsinkd_sink_paused", sink="s") == 1
        tokens.fail_status = None  # the endpoint recovers: the probe resumes the sink
        await until(lambda: accepted >= expected_ids(w))
        await until_status(d, lambda s: s["sinks"]["s"]["paused_since"] is None, what="resumed")
        assert (await accounting(d, "s"))[1:] == (0, 0)
        # A token endpoint that is not there at all: the same, and says so.
        await tokens.stop()
        tokens.issued.clear()  # the receiver now refuses the cached token: a fetch is needed
        w.append(3)
        doc = await until_status(
            d, lambda s: s["sinks"]["s"]["paused_since"] is not None, what="paused again"
        )
        assert "cannot be reached" in doc["sinks"]["s"]["last_error"]
        assert "client-secret-xyz" not in d.log.read_text()
    finally:
        assert await d.stop() == 0
        await hook.stop()
        await tokens.stop()


# -- rotation --------------------------------------------------------------------------


async def test_rotated_secret_files_take_effect_on_sighup(
    tmp_path: Path, new_daemon: Callable[..., Daemon]
) -> None:
    hook = await WebhookServer().start()
    token_file, secret_file = tmp_path / "token", tmp_path / "whsec"
    old_secret, new_secret = whsec(b"old-key-"), whsec(b"new-key-")
    token_file.write_text("token-one\n")
    secret_file.write_text(old_secret)
    sink = {
        "name": "s",
        "url": hook.url,
        "secret": f"file:{secret_file}",
        "auth": {"type": "bearer", "token": f"file:{token_file}"},
    }
    d = new_daemon([sink])
    w = NexusWriter(d.wal, precreate=False)
    w.append(3)
    try:
        await d.start()
        await received_all(hook, expected_ids(w))
        assert {r.headers["Authorization"] for r in hook.requests} == {"Bearer token-one"}
        for r in hook.requests:
            Webhook(old_secret).verify(r.body, r.headers)
        before = len(hook.requests)
        # Rotate both files; the config text does not change.
        token_file.write_text("token-two\n")
        secret_file.write_text(new_secret)
        reloads = "eventsinkd_config_reloads_total"
        done = metric_value(await d.get("/metrics"), reloads, result="success")
        d.signal(signal.SIGHUP)
        await until_metric(d, reloads, done + 1, result="success")
        w.append(3)
        await received_all(hook, expected_ids(w))
        after = hook.requests[before:]
        assert {r.headers["Authorization"] for r in after} == {"Bearer token-two"}
        for r in after:
            Webhook(new_secret).verify(r.body, r.headers)
        assert "secret, certificate or key files changed" in d.log.read_text()
        # A SIGHUP with nothing changed leaves the sink alone.
        d.signal(signal.SIGHUP)
        await until_metric(d, reloads, done + 2, result="success")
        lines = [json.loads(x) for x in d.log.read_text().splitlines() if x.startswith("{")]
        assert lines[-1]["msg"].endswith("no sink changes"), lines[-1]
    finally:
        assert await d.stop() == 0
        await hook.stop()


def test_files_digest_sees_secret_and_certificate_files(
    tmp_path: Path, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventsinkd.config.rotation import files_digest
    from eventsinkd.config.sinks import WebhookSinkConfig

    cert, key = tls_files
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert.read_bytes())
    token = tmp_path / "token"
    token.write_text("one")
    monkeypatch.setenv("HOOK_TOKEN", "env-one")

    def sink(token_ref: str) -> WebhookSinkConfig:
        return WebhookSinkConfig.model_validate(
            {
                "name": "s",
                "url": "https://127.0.0.1/",
                "auth": {"type": "bearer", "token": token_ref},
                "tls": {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)},
            }
        )

    before = files_digest(sink(f"file:{token}"))
    assert files_digest(sink(f"file:{token}")) == before  # nothing changed
    token.write_text("two")
    after_token = files_digest(sink(f"file:{token}"))
    assert after_token != before
    ca.write_bytes(cert.read_bytes() + b"\n")
    assert files_digest(sink(f"file:{token}")) != after_token
    env_digest = files_digest(sink("env:HOOK_TOKEN"))
    monkeypatch.setenv("HOOK_TOKEN", "env-two")  # env: is fixed for a running process
    assert files_digest(sink("env:HOOK_TOKEN")) == env_digest
