"""``python -m bench.webhook_client``: what one webhook POST costs, aiohttp against ours.

Both clients post the same small JSON body with the same headers to ``bench/receiver.py``
(0 ms, its own process) over 16 kept-open connections, 16 requests in flight, on uvloop:
aiohttp as the load generator uses it (``session.post``, then reading the response), and
``eventsinkd.transports.client.HttpClient`` as the webhook and OTLP transports do. Each
client runs in this process in turn (interleaved, 3 times); CPU is this process's time per
request. ``--baseline FILE`` measures, interleaved with them, an older client kept in a file
(a module with an ``H1Pool(url, headers)``), e.g. the one before issue 22:
``git show c55b9aa:eventsinkd/transports/h1.py > /tmp/h1_old.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from bench import Row, print_table
from bench.common import Receiver
from eventsinkd.transports.client import HttpClient

CONNECTIONS = 16
BODY = b'{"event_type":"memory_written","payload_id":"0f3c...","source":"claude-desktop"}' * 3
HEADERS = [("Content-Type", "application/json"), ("User-Agent", "eventsinkd/bench")]

Client = Callable[[str, int], Awaitable[float]]  # (url, requests) -> seconds


async def _run(n: int, post: Callable[[int], Awaitable[None]]) -> float:
    left = iter(range(n))

    async def worker() -> None:
        for i in left:
            await post(i)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return time.monotonic() - t0


async def with_aiohttp(url: str, n: int) -> float:
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(i: int) -> None:
            headers = {**dict(HEADERS), "webhook-id": f"memory_written:{i}"}
            async with session.post(url, data=BODY, headers=headers) as resp:
                await resp.read()
                assert resp.status == 204, resp.status

        return await _run(n, post)


async def with_h1(url: str, n: int, make: Callable[..., Any] = HttpClient) -> float:
    pool = make(url, HEADERS)

    async def post(i: int) -> None:
        resp = await pool.post([("webhook-id", f"memory_written:{i}")], BODY, 10.0)
        assert resp.status == 204, resp.status

    try:
        return await _run(n, post)
    finally:
        await pool.close()


def _baseline(path: Path) -> Client:
    spec = importlib.util.spec_from_file_location("baseline_client", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return partial(with_h1, make=module.H1Pool)


def measure(
    n: int, runs: int, baseline: Path | None = None
) -> dict[str, list[tuple[float, float]]]:
    """(requests/s, µs of CPU per request) per client and run."""
    import uvloop

    clients: list[tuple[str, Client]] = [("aiohttp", with_aiohttp), ("eventsinkd client", with_h1)]
    if baseline is not None:
        clients.append((f"baseline {baseline.name}", _baseline(baseline)))
    out: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in clients}
    with Receiver(0) as rcv:
        for _ in range(runs):
            for name, client in clients:
                uvloop.run(client(rcv.url, 500))  # warm up: imports, connections
                c0 = time.process_time()
                seconds = uvloop.run(client(rcv.url, n))
                cpu = time.process_time() - c0
                out[name].append((n / seconds, cpu / n * 1e6))
    return out


def rows(results: dict[str, list[tuple[float, float]]]) -> list[Row]:
    out = []
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        us = statistics.median(u for _, u in runs)
        each = " / ".join(f"{r:,.0f}/s {u:.1f} µs" for r, u in runs)
        out.append(
            Row(
                "webhook client",
                f"{name}, {CONNECTIONS} conns, 0 ms",
                f"{us:.1f} µs/request",
                f"{rate:,.0f} requests/s; median of {len(runs)} ({each})",
            )
        )
    return out


def run(quick: bool = False, baseline: Path | None = None) -> list[Row]:
    return rows(measure(10_000 if quick else 40_000, 1 if quick else 3, baseline))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.webhook_client", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline", type=Path, help="a file with an older client's H1Pool")
    args = ap.parse_args()
    print_table("webhook client", run(args.quick, args.baseline))


if __name__ == "__main__":
    main()
