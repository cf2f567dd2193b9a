"""HTTP sinks through a proxy (issue 22): the environment read as curl reads it, a sink's
``proxy:``, and webhook and OTLP sinks delivering through a real tinyproxy
(tests/support/tinyproxy.py) on 127.0.0.1: https through CONNECT (TLS verified against the
origin), http in absolute form, NO_PROXY going around it, and a proxy that refuses pausing the
sink."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import Daemon, daemons, sink_status, until_status
from engine_harness import batch, events_cfg, run
from tinyproxy import free_port, tinyproxy

from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.config.options import TlsConfig
from eventsinkd.devtools.peers.otlp import OtlpPeer
from eventsinkd.devtools.peers.webhook import WebhookServer, https_receiver
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.transports.client import HttpClient
from eventsinkd.transports.proxy import ProxyError, bypass, choose, parse_proxy_url
from eventsinkd.transports.tls import ssl_context

PASSWORD = "pr0xy-Pa55"  # must never show


# -- choosing the proxy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("*", "anything.example", 443, True),
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        (".example.com", "api.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        ("example.com.", "API.Example.COM", 443, True),
        ("a.test, example.com ,b.test", "example.com", 80, True),
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("fd00::/8", "fd12::1", 80, True),
        ("[::1]:8080", "::1", 8080, True),
        ("::1", "[::1]", 80, True),
        ("localhost", "127.0.0.1", 80, False),  # names are not resolved
        ("", "example.com", 80, False),
        ("127.0.0.1", "localhost", 80, False),  # no automatic loopback exemption (curl)
    ],
)
def test_no_proxy_is_read_as_curl_reads_it(
    no_proxy: str, host: str, port: int, bypassed: bool
) -> None:
    assert bypass(no_proxy, host, port) is bypassed


def test_the_environment_and_the_sinks_setting() -> None:
    env = {
        "HTTPS_PROXY": "http://user:pw@secure-proxy:3128",
        "http_proxy": "plain-proxy:8080",
        "HTTP_PROXY": "http://ignored-upper:1",
        "NO_PROXY": ".internal",
    }
    secure = choose(None, "https", "api.example.com", 443, env)
    assert secure is not None and secure.where == "secure-proxy:3128"
    assert secure.authorization == "Basic dXNlcjpwdw=="  # user:pw
    assert secure.source == "HTTPS_PROXY"
    plain = choose(None, "http", "api.example.com", 80, env)
    assert plain is not None and (plain.where, plain.source) == ("plain-proxy:8080", "http_proxy")
    assert choose(None, "https", "db.internal", 443, env) is None
    assert choose("none", "https", "api.example.com", 443, env) is None
    own = choose("http://own:3129", "https", "db.internal", 443, env)  # overrides NO_PROXY too
    assert own is not None and own.where == "own:3129"
    assert choose(None, "https", "x", 443, {}) is None
    fallback = choose(None, "https", "x", 443, {"all_proxy": "http://every:1"})
    assert fallback is not None and fallback.where == "every:1"
    with pytest.raises(ProxyError, match="HTTPS_PROXY cannot be used") as err:
        choose(None, "https", "x", 443, {"HTTPS_PROXY": f"socks5://u:{PASSWORD}@s:1080"})
    assert PASSWORD not in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        f"https://u:{PASSWORD}@proxy:3128",
        f"socks5://u:{PASSWORD}@proxy:1080",
        f"http://u:{PASSWORD}@proxy:99999",
        f"http://u:{PASSWORD}@proxy:3128/path",
    ],
)
def test_a_proxy_that_cannot_be_used_is_a_config_error_without_its_password(
    url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as err:
        parse_proxy_url(url)
    assert PASSWORD not in str(err.value)
    text = f"wal:\n  dir: {tmp_path}\nevents:\n  sinks:\n    - name: s\n      url: http://x/\n"
    text += f"      proxy: {url}\n"
    with pytest.raises(ConfigError) as cerr:
        parse_config(text, tmp_path / "c.yaml")
    assert PASSWORD not in str(cerr.value)
    assert "events.sinks[0].proxy (line 7)" in str(cerr.value) or "proxy" in str(cerr.value)


# -- through tinyproxy, in process ----------------------------------------------------------


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.mark.parametrize("how", ["proxy:", "env", "proxy: env:VAR"])
async def test_a_webhook_sink_reaches_https_through_connect(
    how: str, tmp_path: Path, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    async with (
        https_receiver(server_context(cert, key)) as (url, seen),
        tinyproxy(tmp_path, [port_of(url)], ("alice", PASSWORD)) as proxy,
    ):
        sink: dict[str, Any] = {"name": "s", "url": url, "tls": {"ca_file": str(cert)}}
        proxy_url = f"http://alice:{PASSWORD}@127.0.0.1:{proxy.port}"
        if how == "env":
            monkeypatch.setenv("HTTPS_PROXY", proxy_url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
        elif how == "proxy: env:VAR":  # a secret reference, as the sink's url may be
            monkeypatch.setenv("EXAMPLE_PROXY_URL", proxy_url)
            sink["proxy"] = "env:EXAMPLE_PROXY_URL"
        else:
            sink["proxy"] = proxy_url
        h = await run(events_cfg(sink), batch(0, 5))
        requests = proxy.requests()
    assert h.accounting("s") == (5, 5, 0, 0)
    assert len(seen) == 5
    assert requests and all(r == f"CONNECT 127.0.0.1:{port_of(url)} HTTP/1.1" for r in requests)


async def test_tls_through_the_tunnel_is_verified_against_the_origin(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """Without the origin's CA the handshake through the tunnel fails (the proxy does not
    stand in for the receiver's certificate); with it, the name checked is the origin's."""
    cert, key = tls_files
    async with (
        https_receiver(server_context(cert, key)) as (url, seen),
        tinyproxy(tmp_path, [port_of(url)]) as proxy,
    ):
        via = parse_proxy_url(proxy.url)
        untrusted = HttpClient(url, [], ssl_context=ssl_context(TlsConfig()), proxy=via)
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusted.post([("webhook-id", "memory_written:x")], b"{}", 10)
        await untrusted.close()
        trusted = HttpClient(url, [], ssl_context=ssl_context(TlsConfig(ca_file=cert)), proxy=via)
        resp = await trusted.post([("webhook-id", "memory_written:y")], b"{}", 10)
        await trusted.close()
        requests = proxy.requests()
    assert resp.status == 204 and seen == ["memory_written:y"]
    assert requests == [f"CONNECT 127.0.0.1:{port_of(url)} HTTP/1.1"] * 2


async def test_plain_http_goes_through_the_proxy_in_absolute_form(tmp_path: Path) -> None:
    receiver = await WebhookServer().start()
    try:
        async with tinyproxy(tmp_path, [], ("alice", PASSWORD)) as proxy:
            sink = {
                "name": "s",
                "url": receiver.url,
                "proxy": f"http://alice:{PASSWORD}@127.0.0.1:{proxy.port}",
            }
            h = await run(events_cfg(sink), batch(0, 4))
            requests = proxy.requests()
    finally:
        await receiver.stop()
    assert h.accounting("s") == (4, 4, 0, 0)
    assert len(receiver.ids) == 4
    assert requests and all(r == f"POST {receiver.url} HTTP/1.1" for r in requests)


@pytest.mark.parametrize("how", ["proxy:", "env"])
async def test_an_otlp_sink_goes_through_the_proxy(
    how: str, tmp_path: Path, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    peer = await OtlpPeer().start(ssl_context=server_context(cert, key))
    try:
        async with tinyproxy(tmp_path, [peer.port]) as proxy:
            sink: dict[str, Any] = {
                "name": "o",
                "type": "otlp",
                "url": peer.url,
                "tls": {"ca_file": str(cert)},
                "max_batch": 3,
            }
            if how == "env":
                monkeypatch.setenv("https_proxy", proxy.url)
                monkeypatch.delenv("NO_PROXY", raising=False)
                monkeypatch.delenv("no_proxy", raising=False)
            else:
                sink["proxy"] = proxy.url
            h = await run(events_cfg(sink), batch(0, 7))
            requests = proxy.requests()
    finally:
        await peer.stop()
    assert h.accounting("o") == (7, 7, 0, 0)
    assert len(peer.accepted_ids()) == 7
    assert requests and all(r == f"CONNECT 127.0.0.1:{peer.port} HTTP/1.1" for r in requests)


async def test_an_otlp_sink_over_plain_http_uses_the_absolute_form(tmp_path: Path) -> None:
    peer = await OtlpPeer().start()
    try:
        async with tinyproxy(tmp_path, []) as proxy:
            sink = {"name": "o", "type": "otlp", "url": peer.url, "proxy": proxy.url}
            h = await run(events_cfg(sink), batch(0, 3))
            requests = proxy.requests()
    finally:
        await peer.stop()
    assert h.accounting("o") == (3, 3, 0, 0)
    assert requests and all(r == f"POST {peer.url}/v1/logs HTTP/1.1" for r in requests)


@pytest.mark.parametrize("how", ["NO_PROXY", "proxy: none"])
async def test_no_proxy_hosts_and_proxy_none_go_around_the_proxy(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = free_port()  # a proxy that is not there: going through it would fail
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    receiver = await WebhookServer().start()
    try:
        sink: dict[str, Any] = {"name": "s", "url": receiver.url}
        if how == "NO_PROXY":
            monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.0/8")
        else:
            monkeypatch.delenv("NO_PROXY", raising=False)
            sink["proxy"] = "none"
        h = await run(events_cfg(sink), batch(0, 3))
    finally:
        await receiver.stop()
    assert h.accounting("s") == (3, 3, 0, 0)


# -- a proxy that refuses, with the real daemon ------------------------------------------------


@pytest.mark.parametrize("refusal", ["407", "wrong password", "403", "no answer"])
async def test_a_proxy_that_refuses_pauses_the_sink_and_status_says_why(
    refusal: str, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    async with https_receiver(server_context(cert, key)) as (url, seen):
        target = port_of(url)
        # 407: asks for credentials the sink does not give; a wrong password (tinyproxy then
        # answers 401); 403: CONNECT to a port it does not allow; no answer: a listener that
        # never says anything.
        asks = refusal in ("407", "wrong password")
        ports = [target] if asks else [target + 1]
        auth = ("alice", "right") if asks else None
        async with tinyproxy(tmp_path, ports, auth) as proxy, AsyncExitStack() as stack:
            silent = await stack.enter_async_context(silent_listener())
            port = silent if refusal == "no answer" else proxy.port
            creds = "" if refusal == "407" else f"alice:{PASSWORD}@"
            proxy_url = f"http://{creds}127.0.0.1:{port}"
            sink = {
                "name": "s",
                "url": url,
                "tls": {"ca_file": str(cert)},
                "timeout_seconds": 1,
                "max_retries": 100,
            }
            env = {"HTTPS_PROXY": proxy_url, "NO_PROXY": ""} if refusal == "403" else {}
            if not env:
                sink["proxy"] = proxy_url
            async with daemons(tmp_path / "d") as make:
                d: Daemon = make([sink], pause_after_failures=3)
                await d.start(env=_env(env))
                NexusWriter(d.wal).append(3)
                doc = await until_status(
                    d,
                    lambda s: s["sinks"]["s"]["paused_since"] is not None,
                    what="the sink pauses",
                )
                error = (await sink_status(d))["last_error"]
                status_text = await d.get("/status")
                metrics_text = await d.get("/metrics")
                assert await d.stop() == 0
                log_text = d.log.read_text()
    assert seen == []
    assert doc["sinks"]["s"]["paused_since"] is not None
    assert f"127.0.0.1:{port}" in error, error
    expected = {
        "407": "HTTP 407 Proxy Authentication Required",
        "wrong password": "HTTP 401",
        "403": "HTTP 403",
        "no answer": "did not answer",
    }[refusal]
    assert expected in error, error
    for text in (status_text, metrics_text, log_text):
        assert PASSWORD not in text


@asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A "proxy" on 127.0.0.1 that accepts connections and never says anything: its port."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("https_proxy", "http_proxy", "all_proxy", "no_proxy")
    }
    env.update(extra)
    return env
