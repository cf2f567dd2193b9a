"""Secrets never shown: URL redaction, ``url`` as a secret reference, and a real daemon with a
distinct secret planted in every kind of sink, whose every surface is searched for them
(check-config, ``eventsinkd status``, /status, /metrics, the DEBUG log, error messages)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from daemon_harness import (
    Daemon,
    daemons,
    expected_ids,
    received_all,
    until_metric,
    until_status,
)
from oauth2_server import TokenServer

from eventsinkd.common.ports import free_port
from eventsinkd.common.secrets import redact_url
from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.config.secreturl import SecretUrl
from eventsinkd.devtools.child import DaemonDir
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://alice:PW@h.example/p?token=T&x=",
            "https://alice:***@h.example/p?token=***&x=***",
        ),
        ("http://bob@h:8080/a", "http://bob@h:8080/a"),
        ("http://h/?solo", "http://h/?solo=***"),
        ("http://[::1]:9/x#frag", "http://[::1]:9/x"),
        ("nats://u:p@n1:4222", "nats://u:***@n1:4222"),
        ("not a url ?t=1", "***"),
        ("http://h:99999999/?t=1", "***"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_secret_url_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_URL", "https://hooks.slack.com/services/T0/B0/XXXXSECRET")
    url = SecretUrl.parse("env:SLACK_URL")
    assert str(url) == "https://hooks.slack.com/services/T0/B0/XXXXSECRET"
    assert url.shown == "env:SLACK_URL (hooks.slack.com)"
    assert (url.scheme, url.host, url.port) == ("https", "hooks.slack.com", 443)
    assert "XXXX" not in repr(url)
    f = tmp_path / "u"
    f.write_text("http://u:pw@127.0.0.1:81/x\n")
    assert SecretUrl.parse(f"file:{f}").shown == f"file:{f} (127.0.0.1)"
    monkeypatch.setenv("BAD_URL", "ftp://u:SECRETPW@h/")
    with pytest.raises(ValueError, match="env:BAD_URL holds no http") as info:
        SecretUrl.parse("env:BAD_URL")
    assert "SECRETPW" not in str(info.value)


# -- every surface of a daemon with a secret planted in every sink -------------------------

PLANTED = {
    "webhook url password": "PLANTwhpw01",
    "webhook url query": "PLANTwhq02",
    "webhook header": "PLANTwhhdr03",
    "basic password": "PLANTbasic05",
    "token url query": "PLANTtokq06",
    "oauth2 client_secret": "PLANTcs07",
    "env url query": "PLANTenvq08",
    "otlp url password": "PLANTotpw09",
    "otlp header": "PLANTothdr10",
    "otlp bearer token": "PLANTotbear11",
    "nats token": "PLANTnatstok13",
    "nats password": "PLANTnatspw14",
    "mac key": "PLANTmac15",
}
WHSEC_KEY = base64.b64encode(b"PLANTwhsec04-key-bytes-32-long!!").decode()
PLANTED["whsec secret"] = WHSEC_KEY
PLANTED["whsec key bytes"] = "PLANTwhsec04"


def planted_config(hook: str, ok_port: int, tokens: TokenServer) -> list[dict[str, Any]]:
    closed = free_port()
    p = PLANTED
    return [
        {
            "name": "hook",  # answers 503: errors in /status and the log
            "url": f"http://alice:{p['webhook url password']}@{hook}"
            f"?token={p['webhook url query']}",
            "headers": {"X-Api-Key": p["webhook header"]},
            "secret": f"whsec_{WHSEC_KEY}",
        },
        {
            "name": "basic",
            "url": f"http://{hook}",
            "auth": {"type": "basic", "user": "alice", "password": p["basic password"]},
        },
        {
            "name": "oauth",
            "url": f"http://{hook}",
            "auth": {
                "type": "oauth2",
                "token_url": f"{tokens.url}?key={p['token url query']}",
                "client_id": "client",
                "client_secret": p["oauth2 client_secret"],
            },
        },
        {"name": "envurl", "url": "env:PLANT_URL"},  # delivers to the OK receiver
        {
            "name": "otel",
            "type": "otlp",
            "url": f"http://u:{p['otlp url password']}@127.0.0.1:{closed}/",
            "headers": {"api-key": p["otlp header"]},
        },
        {
            "name": "otel2",
            "type": "otlp",
            "url": f"http://127.0.0.1:{closed}/",
            "auth": {"type": "bearer", "token": p["otlp bearer token"]},
        },
        {
            "name": "bus2",
            "type": "nats",
            "url": f"nats://127.0.0.1:{closed}",
            "token": p["nats token"],
        },
        {
            "name": "bus3",
            "type": "nats",
            "url": f"nats://127.0.0.1:{closed}",
            "user": "n",
            "password": p["nats password"],
        },
        {"name": "siem", "type": "syslog", "url": f"syslog+tcp://127.0.0.1:{closed}"},
        {"name": "logs", "type": "fluentd", "url": f"fluentd://127.0.0.1:{closed}"},
    ]


def leaks(surface: str, text: str, extra: list[str] | None = None) -> list[str]:
    found = [what for what, value in PLANTED.items() if value in text]
    found += [f"issued token {t[:4]}..." for t in extra or [] if t in text]
    return [f"{surface}: {what}" for what in found]


async def test_planted_secrets_appear_on_no_surface(tmp_path: Path) -> None:
    async def refuse(_n: int, _req: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="busy")

    bad = await WebhookServer(behaviour=refuse).start()
    good = await WebhookServer().start()
    tokens = await TokenServer("client", PLANTED["oauth2 client_secret"], lifetime_s=60).start()
    env = {**os.environ, "PLANT_URL": f"{good.url}?sig={PLANTED['env url query']}"}
    found: list[str] = []
    async with daemons(tmp_path) as make:
        d: Daemon = make([])
        sinks = planted_config(f"127.0.0.1:{bad.port}/hook", good.port, tokens)
        DaemonDir.write_config(
            d,
            sinks,
            wal={"start_at": "beginning", "poll_interval_s": 0.1, "mac_key": PLANTED["mac key"]},
            events={"retry_backoff_seconds": [0.1], "shutdown_timeout_s": 2, "max_inflight": 50},
            log={"level": "debug", "format": "json"},
        )
        w = NexusWriter(d.wal, precreate=False, mac_key=PLANTED["mac key"].encode())
        w.append(4)

        res = await asyncio.to_thread(_run, ["check-config", "-c", str(d.config)], env)
        assert res.returncode == 0, res.stderr
        assert "env:PLANT_URL (127.0.0.1)" in res.stdout
        assert "alice:***@127.0.0.1" in res.stdout and "token=***" in res.stdout
        found += leaks("check-config", res.stdout + res.stderr)

        try:
            await d.start(env=env)
            # The env: URL delivers end to end.
            await received_all(good, expected_ids(w))

            def failing(doc: dict[str, Any]) -> bool:
                s = doc["sinks"]
                refused = ("hook", "basic", "oauth", "otel", "otel2", "bus2", "bus3")
                return all(s[n]["last_error"] for n in refused)

            doc = await until_status(d, failing, what="every refused sink has a last_error")
            assert doc["sinks"]["envurl"]["url"] == "env:PLANT_URL (127.0.0.1)"
            assert doc["sinks"]["hook"]["url"].startswith("http://alice:***@127.0.0.1:")
            status_json = await d.get("/status")
            found += leaks("/status", status_json, list(tokens.issued))
            found += leaks("/metrics", await d.get("/metrics"), list(tokens.issued))
            for args in (
                ["status", "-c", str(d.config)],
                ["status", "--json", "-c", str(d.config)],
            ):
                res = await asyncio.to_thread(_run, args, env)
                assert res.returncode == 0, res.stderr
                found += leaks(" ".join(args[:2]), res.stdout + res.stderr, list(tokens.issued))
            assert tokens.issued, "the oauth2 sink got a token (so there is one to look for)"

            # A reload refused for bad values (a port out of range in a URL full of
            # secrets, an unknown auth type holding a password): the error in the log.
            broken = yaml.safe_load(d.config.read_text())
            pw, query = PLANTED["webhook url password"], PLANTED["webhook url query"]
            broken["events"]["sinks"][0]["url"] = f"http://alice:{pw}@h:99999/?t={query}"
            broken["events"]["sinks"][2]["auth"] = {
                "type": "digest",
                "password": PLANTED["basic password"],
            }
            good_text = d.config.read_text()
            d.config.write_text(yaml.safe_dump(broken))
            d.signal(signal.SIGHUP)
            await until_metric(d, "eventsinkd_config_reloads_total", 1, result="failure")
            res = await asyncio.to_thread(_run, ["check-config", "-c", str(d.config)], env)
            assert res.returncode != 0
            assert "events.sinks[0].url" in res.stderr and "events.sinks[2].auth.type" in res.stderr
            found += leaks("check-config refusal", res.stdout + res.stderr)
            with pytest.raises(ConfigError) as info:
                parse_config(d.config.read_text(), d.config)
            found += leaks("ConfigError", str(info.value))
            d.config.write_text(good_text)
        finally:
            assert await d.stop() == 0
            await bad.stop()
            await good.stop()
            await tokens.stop()
        log = d.log.read_text()
        assert "reload failed" in log
        found += leaks("daemon log (DEBUG)", log, list(tokens.issued))
    assert not found, found


def _run(args: list[str], env: dict[str, str]) -> Any:
    import subprocess

    from eventsinkd.devtools.child import command

    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=60, check=False, env=env
    )
