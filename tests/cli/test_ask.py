"""Asking a running daemon from the command line: ``eventsinkd health`` and ``status`` find it
through its config's admin.listen (a non-default port here), and say plainly when they cannot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import Daemon, eventsinkd, until

from eventsinkd.cli.ask import AskError, admin_base, summary
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter


async def test_health_and_status_through_the_config(
    new_daemon: Callable[..., Daemon], receiver: WebhookServer
) -> None:
    d = new_daemon([{"name": "hooks", "url": receiver.url}])
    NexusWriter(d.wal, precreate=False).append(3)
    await d.start()
    await until(lambda: len(receiver.requests) >= 3)

    # The receiver logs a request before it answers: wait for the daemon to count it.
    async def counted() -> None:
        while json.loads(await d.get("/status"))["sinks"]["hooks"]["delivered"] < 3:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(counted(), 30)

    healthy = await eventsinkd("health", "-c", d.config)
    assert healthy.returncode == 0 and healthy.stdout.startswith("healthy"), healthy
    assert (await eventsinkd("health", "-c", d.config, "--ready")).returncode == 0

    shown = await eventsinkd("status", "-c", d.config)
    assert shown.returncode == 0, shown.stderr
    assert ": ready, WAL " in shown.stdout
    assert f"hooks (webhook {receiver.url}): running" in shown.stdout
    assert "delivered 3  failed 0  dropped 0  dead letters 0" in shown.stdout
    assert "lag none" in shown.stdout
    doc = json.loads((await eventsinkd("status", "-c", d.config, "--json")).stdout)
    assert doc["sinks"]["hooks"]["delivered"] == 3

    assert await d.stop() == 0
    down = await eventsinkd("health", "-c", d.config)
    assert down.returncode == 1 and down.stderr.startswith("unhealthy: "), down
    assert f"127.0.0.1:{d.admin_port}" in down.stderr
    gone = await eventsinkd("status", "-c", d.config)
    assert gone.returncode == 1 and f"127.0.0.1:{d.admin_port}/status" in gone.stderr


@pytest.mark.parametrize(
    ("admin", "base"),
    [
        ("admin: {listen: '10.1.2.3:9000'}", "http://10.1.2.3:9000"),
        ("admin: {listen: '0.0.0.0:9000'}", "http://127.0.0.1:9000"),
        ("admin: {listen: '[::]:9000'}", "http://[::1]:9000"),
        ("admin: {listen: '[::1]:9000'}", "http://[::1]:9000"),
        ("", "http://127.0.0.1:9464"),  # no admin section: the default
    ],
)
def test_the_admin_address_from_the_config(tmp_path: Path, admin: str, base: str) -> None:
    cfg = tmp_path / "config.yaml"
    # Only admin is read: the rest need not even be valid for a probe.
    cfg.write_text(f"wal: {{dir: env:NOT_SET_ANYWHERE}}\n{admin}\n")
    assert admin_base(cfg) == base


def test_a_config_that_cannot_say_where(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    with pytest.raises(AskError, match="cannot read"):
        admin_base(cfg)
    cfg.write_text("admin: {listen: 'nowhere'}\n")
    with pytest.raises(AskError, match=r"admin\.listen: .*host:port"):
        admin_base(cfg)


async def test_health_without_a_config_is_unhealthy_not_an_error(tmp_path: Path) -> None:
    r = await eventsinkd("health", "-c", tmp_path / "missing.yaml")
    assert r.returncode == 1  # container runtimes reserve the other codes
    assert r.stderr.startswith("unhealthy: cannot read ")


def test_a_sink_in_trouble_shows_why() -> None:
    doc = {
        "version": "1",
        "ready": False,
        "problems": ["WAL directory /wal: not readable"],
        "wal_dir": "/wal",
        "overflow": "block",
        "lag": {"seconds_behind": 75.0},
        "sinks": {
            "hooks": {
                "type": "webhook",
                "url": "http://r/hook",
                "state": "paused",
                "last_error": "HTTP 503",
                "delivered": 1200,
                "failed": 2,
                "dropped": 0,
                "dead_letters": 2,
                "lag": {"events": 5000, "bytes": 100, "seconds": 75.0},
                "queue_depth": 1000,
                "max_inflight": 1000,
                "concurrency": {"current": 3, "setting": "auto", "max": 128},
                "last_success": 1000.0,
                "last_failure": 1090.0,
            }
        },
    }
    text = summary(doc, now=1100.0)
    assert "NOT READY" in text and "problem: WAL directory /wal: not readable" in text
    assert "hooks (webhook http://r/hook): paused" in text
    assert "delivered 1,200  failed 2  dropped 0  dead letters 2" in text
    assert (
        "lag 5,000 events, 75.0s  queue 1,000/1,000  concurrency 3 in flight (auto, max 128)"
        in text
    )
    assert "last success 100s ago, last failure 10s ago" in text
    assert "last error: HTTP 503" in text
