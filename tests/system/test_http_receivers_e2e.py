"""Issue 22, end to end with the real daemon (a subprocess, on uvloop): the hostile receivers
that made the old clients count events delivered that no receiver accepted, and a webhook
sink delivering through a real tinyproxy configured by the environment only."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
from daemon_harness import Daemon, accounting, daemons, expected_ids, until_metric
from raw_http import Piece, raw_server
from tinyproxy import tinyproxy

from eventsinkd.devtools.peers.webhook import https_receiver
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

EVENTS = 300


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            [
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                0.002,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ],
            id="503-then-a-stray-200",
        ),
        pytest.param([b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"], id="2000-OK"),
    ],
)
async def test_no_event_is_counted_delivered_by_a_receiver_that_accepts_none(
    answer: list[Piece], tmp_path: Path
) -> None:
    async with raw_server(lambda _n, _h: list(answer)) as srv, daemons(tmp_path) as make:
        sink = {"name": "s", "url": srv.url, "max_retries": 1_000_000, "concurrency": 16}
        # Never pause: every event keeps being tried, so that each gets many chances to be
        # miscounted.
        d: Daemon = make([sink], pause_after_failures=1_000_000, max_inflight=EVENTS)
        await d.start()
        w = NexusWriter(d.wal)
        w.append(EVENTS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while (
            len({_webhook_id(h) for h, _ in srv.requests}) < EVENTS
            or len(srv.requests) < 3 * EVENTS
        ):
            assert loop.time() < deadline, f"only {len(srv.requests)} requests in 120 s"
            await asyncio.sleep(0.1)
        delivered, failed, dropped = await accounting(d, "s")
        tried = len({_webhook_id(h) for h, _ in srv.requests})
        assert await d.stop() == 0
    assert (delivered, failed, dropped) == (0, 0, 0)
    assert tried == len(expected_ids(w)) == EVENTS


def _webhook_id(head: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"webhook-id:"):
            return line.split(b":", 1)[1].strip()
    raise AssertionError(head)


async def test_the_daemon_delivers_through_https_proxy_from_its_environment(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    async with https_receiver(ctx) as (url, seen):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with tinyproxy(tmp_path, [port]) as proxy, daemons(tmp_path / "d") as make:
            sink = {"name": "s", "url": url, "tls": {"ca_file": str(cert)}}
            d: Daemon = make([sink])
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            await d.start(env={**env, "HTTPS_PROXY": proxy.url})
            w = NexusWriter(d.wal)
            w.append(20)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while set(seen) != expected_ids(w):
                assert loop.time() < deadline, f"{len(seen)} of 20 received"
                await asyncio.sleep(0.05)
            await until_metric(d, "bubblefish_events_delivered_total", 20, sink="s")
            assert await accounting(d, "s") == (20, 0, 0)
            assert await d.stop() == 0
            requests = proxy.requests()
    assert requests and all(r == f"CONNECT 127.0.0.1:{port} HTTP/1.1" for r in requests)
