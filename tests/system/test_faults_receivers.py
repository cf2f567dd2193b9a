"""Fault suite, receivers misbehaving: exact accounting against the real daemon.

For each scenario: events written to the WAL = delivered + failed + dropped on
/metrics, and the set the receiver got (deduplicated by webhook-id) equals the
delivered count.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from daemon_harness import Daemon, accounting, expected_ids, metric_value, settle

from eventsinkd.common.ports import server_port
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

N = 600
RATE = 300.0


async def write_stream(w: NexusWriter, n: int = N, rate: float = RATE) -> None:
    def run() -> None:
        start = time.monotonic()
        for i in range(0, n, 10):
            w.append(10)
            delay = start + (i + 10) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    await asyncio.to_thread(run)


async def run_scenario(
    tmp_path: Path,
    sinks: list[dict[str, Any]],
    during: Callable[[], Awaitable[None]] | None = None,
    holding: frozenset[str] = frozenset(),
    **events: Any,
) -> tuple[Daemon, NexusWriter]:
    d = Daemon(tmp_path, sinks, **events)
    await d.start()
    w = NexusWriter(d.wal, max_segment_bytes=128 * 1024)
    try:
        tasks = [asyncio.ensure_future(write_stream(w))]
        if during is not None:
            tasks.append(asyncio.ensure_future(during()))
        await asyncio.gather(*tasks)
        await settle(d, timeout_s=120, holding=holding)
    except BaseException:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()
        raise
    return d, w


async def check_accounting(
    d: Daemon, w: NexusWriter, sink: str, received: WebhookServer | None
) -> tuple[int, int, int]:
    delivered, failed, dropped = await accounting(d, sink)
    assert delivered + failed + dropped == len(w.expected_data()), (delivered, failed, dropped)
    if received is not None:
        got = {i for i in received.ids if i in expected_ids(w)}
        assert len(got) == delivered
    return delivered, failed, dropped


async def test_receiver_down_for_20s_then_back(tmp_path: Path) -> None:
    server = await WebhookServer().start()
    port = server.port

    async def outage() -> None:
        await asyncio.sleep(0.5)
        await server.stop()
        await asyncio.sleep(20)
        await server.start(port)

    d, w = await run_scenario(
        tmp_path,
        [{"name": "s", "url": server.url, "max_retries": 30}],
        during=outage,
        retry_backoff_seconds=[0.5, 1, 2],
        max_inflight=5000,
    )
    try:
        assert await check_accounting(d, w, "s", server) == (N, 0, 0)
        metrics = await d.get("/metrics")
        assert (
            metric_value(
                metrics, "eventsinkd_delivery_attempts_total", sink="s", outcome="connection_error"
            )
            > 0
        )
    finally:
        assert await d.stop() == 0
        await server.stop()


async def test_receiver_answers_429_with_retry_after_for_a_while(tmp_path: Path) -> None:
    busy_until = time.monotonic() + 3

    async def busy(_n: int, _r: web.Request) -> web.StreamResponse:
        if time.monotonic() < busy_until:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=204)

    server = await WebhookServer(busy).start()
    d, w = await run_scenario(
        tmp_path, [{"name": "s", "url": server.url, "max_retries": 10}], max_inflight=5000
    )
    try:
        assert await check_accounting(d, w, "s", server) == (N, 0, 0)
        metrics = await d.get("/metrics")
        assert metric_value(metrics, "eventsinkd_delivery_retries_total", sink="s") > 0
    finally:
        assert await d.stop() == 0
        await server.stop()


async def _raw_server(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{server_port(srv)}/hook"


async def test_receiver_that_never_answers_pauses_its_sink_and_spares_others(
    tmp_path: Path,
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    silent, silent_url = await _raw_server(hold)
    healthy = await WebhookServer().start()
    d, w = await run_scenario(
        tmp_path,
        [
            {
                "name": "silent",
                "url": silent_url,
                "timeout_seconds": 0.3,
                "max_retries": 1,
                "concurrency": 32,
            },
            {"name": "healthy", "url": healthy.url},
        ],
        retry_backoff_seconds=[0.1],
        max_inflight=5000,
        holding=frozenset({"silent"}),
    )
    try:
        assert await check_accounting(d, w, "healthy", healthy) == (N, 0, 0)
        # An outage, not 600 bad events: the sink pauses and gives up on nothing. In drop
        # mode its queue still holds what fits (every event here).
        status = json.loads(await d.get("/status"))
        silent_status = status["sinks"]["silent"]
        assert silent_status["state"] == "paused"
        assert silent_status["last_error"] == "no answer within 0.3s"
        assert (silent_status["failed"], silent_status["queue_depth"]) == (0, N)
        metrics = await d.get("/metrics")
        assert metric_value(metrics, "eventsinkd_sink_paused", sink="silent") == 1
        assert metric_value(metrics, "eventsinkd_sink_paused", sink="healthy") == 0
        # Paused, it probes one event at a time: far fewer attempts than events.
        timeouts = metric_value(
            metrics, "eventsinkd_delivery_attempts_total", sink="silent", outcome="timeout"
        )
        assert 5 <= timeouts < N
    finally:
        assert await d.stop() == 0
        # At shutdown a paused sink's events get no last try: counted as left (dropped).
        assert f"sink silent: {N} event(s) left undelivered at shutdown" in d.log.read_text()
        silent.close()
        for writer in held:
            writer.close()
        await healthy.stop()


async def test_receiver_failing_every_other_request(tmp_path: Path) -> None:
    async def alternate(n: int, _r: web.Request) -> web.StreamResponse:
        return web.Response(status=500 if n % 2 else 200)

    server = await WebhookServer(alternate).start()
    d, w = await run_scenario(
        tmp_path,
        [{"name": "s", "url": server.url, "max_retries": 20}],
        retry_backoff_seconds=[0.05],
        max_inflight=5000,
    )
    try:
        assert await check_accounting(d, w, "s", server) == (N, 0, 0)
        assert len(server.requests) >= 2 * N - 1
    finally:
        assert await d.stop() == 0
        await server.stop()


async def test_receiver_resetting_connections(tmp_path: Path) -> None:
    server = await WebhookServer().start()
    resets = 0

    async def reset_then_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        if resets < 200:
            resets += 1
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
            return
        # Afterwards, behave: forward the connection to the real receiver.
        up_r, up_w = await asyncio.open_connection("127.0.0.1", server.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    proxy, url = await _raw_server(reset_then_proxy)
    d, w = await run_scenario(
        tmp_path,
        [{"name": "s", "url": url, "max_retries": 30}],
        retry_backoff_seconds=[0.05],
        max_inflight=5000,
    )
    try:
        assert await check_accounting(d, w, "s", server) == (N, 0, 0)
        metrics = await d.get("/metrics")
        assert (
            metric_value(
                metrics, "eventsinkd_delivery_attempts_total", sink="s", outcome="connection_error"
            )
            >= 1
        )
    finally:
        assert await d.stop() == 0
        proxy.close()
        await server.stop()
