"""``python -m bench.webhook_client``: what one webhook POST costs, aiohttp against ours.

Both clients post the same small JSON body with the same headers to ``bench/receiver.py``
(0 ms, its own process) over 16 kept-open connections, 16 requests in flight, on uvloop:
aiohttp as the load generator uses it (``session.post``, then reading the response), and
``eventsinkd.transports.h1.H1Pool`` as the webhook transport does. Each client runs in this
process in turn (interleaved, ``--runs`` times); CPU is this process's time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bench import Row, print_table
from bench.common import Receiver
from eventsinkd.transports.h1 import H1Pool

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


async def with_h1(url: str, n: int) -> float:
    pool = H1Pool(url, HEADERS)

    async def post(i: int) -> None:
        resp = await pool.post([("webhook-id", f"memory_written:{i}")], BODY, 10.0)
        assert resp.status == 204, resp.status

    try:
        return await _run(n, post)
    finally:
        await pool.close()


def measure(n: int, runs: int) -> dict[str, list[tuple[float, float]]]:
    """(requests/s, µs of CPU per request) per client and run."""
    import uvloop

    out: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "eventsinkd h1": []}
    with Receiver(0) as rcv:
        for _ in range(runs):
            for name, client in (("aiohttp", with_aiohttp), ("eventsinkd h1", with_h1)):
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


def run(quick: bool = False) -> list[Row]:
    return rows(measure(10_000 if quick else 40_000, 1 if quick else 3))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.webhook_client", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print_table("webhook client", run(args.quick))


if __name__ == "__main__":
    main()
