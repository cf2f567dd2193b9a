"""A minimal fast webhook receiver on 127.0.0.1, and a load generator to measure it alone.

The receiver is :mod:`eventsinkd.devtools.peers.webhook`'s counting one (``start_raw``,
``start_aiohttp``); this module runs it in a child process of its own.

Receiver (run as a subprocess by ``bench.delivery``)::

    python -m bench.receiver --latency-ms 10 [--impl raw|aiohttp]

binds an ephemeral port on 127.0.0.1, prints ``PORT <n> <loop>`` on stdout, and answers every
POST with ``204 No Content`` after ``--latency-ms`` (a timer on the event loop, so any
number of requests wait concurrently; a huge value makes a receiver that never answers).
``GET /__stats`` answers ``{"requests": <POSTs answered>, "received": <POSTs received>,
"cpu_s": <process CPU seconds>, "first_ns": ..., "last_ns": ...}`` and is not counted;
``first_ns``/``last_ns`` are the arrival times of the first and last POST, in
``time.monotonic_ns()`` (CLOCK_MONOTONIC: on Linux one clock for every process, so they
compare with times taken in other processes). With ``--record-arrivals`` the receiver also
keeps the arrival time of every ``webhook-id`` (the first one, if an id arrives twice), and
``GET /__stats?arrivals=1`` adds ``"arrivals": {<webhook-id>: <monotonic ns>}`` and
``"unique"``. It exits on SIGTERM/SIGINT, when its stdin closes (the parent died) or after
``--max-seconds``.

``--impl raw`` (the default) is a bare asyncio HTTP/1.1 keep-alive protocol - it only
understands what HTTP clients like aiohttp send (Content-Length bodies) - and costs a few
tens of microseconds of CPU per request; ``--impl aiohttp`` is an ``aiohttp.web`` server for
comparison. The receiver runs on uvloop when it is installed (``--no-uvloop`` to refuse it).

Load generator (also a separate process)::

    python -m bench.receiver --load http://127.0.0.1:<port>/hook --connections 64 --seconds 3

keeps ``--connections`` keep-alive connections busy with webhook-sized POSTs for
``--seconds`` (after a short warm-up) and prints one JSON line: answered requests,
requests/s and its own CPU seconds. It uses asyncio's own loop, like eventsinkd, unless
given ``--uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

from eventsinkd.devtools.peers.serving import install_uvloop, stop_when_told
from eventsinkd.devtools.peers.webhook import IMPLS, Counter

# A body and headers the size of a real event (shared/spec/events.md), for the load generator.
LOAD_BODY = (
    b'{"event_type":"memory_written","payload_id":"p000000","source":"claude-desktop",'
    b'"subject":"user:alice","destination":"sqlite","timestamp":"2026-04-10T12:34:56.1234567Z",'
    b'"actor_type":"user","actor_id":"alice"}'
)
LOAD_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "bench-loadgen",
    "webhook-id": "memory_written:p000000",
    "webhook-timestamp": "1775824496",
}


async def serve(
    impl: str, latency_ms: float, max_seconds: float, loop_name: str, record_arrivals: bool = False
) -> None:
    stop = stop_when_told()
    counter = Counter(record_arrivals)
    port, close = await IMPLS[impl](counter, latency_ms / 1000)
    print(f"PORT {port} {loop_name}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    await close()
    print(json.dumps({"requests": counter.requests, "cpu_s": time.process_time()}), flush=True)


# -- load generator --------------------------------------------------------------------


async def load(url: str, connections: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    import aiohttp

    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup_s
    deadline = begin + seconds
    counted = [0, 0]  # [answered 2xx, errors], inside the measured window only
    cpu_at_begin: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while (now := loop.time()) < deadline:
            ok = False
            try:
                async with session.post(url, data=LOAD_BODY, headers=LOAD_HEADERS) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 300
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if now >= begin and loop.time() <= deadline:
                counted[0 if ok else 1] += 1

    async def mark_begin() -> None:
        await asyncio.sleep(warmup_s)
        cpu_at_begin.append(time.process_time())

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(mark_begin(), *(worker(session) for _ in range(connections)))
    cpu = time.process_time() - (cpu_at_begin[0] if cpu_at_begin else 0.0)
    return {
        "requests": counted[0],
        "errors": counted[1],
        "seconds": seconds,
        "rate": counted[0] / seconds,
        "cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.receiver")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--impl", choices=sorted(IMPLS), default="raw")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="exit after this long")
    ap.add_argument("--no-uvloop", action="store_true", help="receiver: use asyncio's loop")
    ap.add_argument(
        "--record-arrivals",
        action="store_true",
        help="receiver: keep each webhook-id's arrival time (GET /__stats?arrivals=1)",
    )
    ap.add_argument("--uvloop", action="store_true", help="load generator: use uvloop")
    ap.add_argument("--load", metavar="URL", help="be the load generator against URL")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    args = ap.parse_args(argv)
    if args.load:
        loop_name = install_uvloop(args.uvloop)
        if args.uvloop and loop_name != "uvloop":
            ap.error("--uvloop: uvloop is not installed")
        host = args.load.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        if host != "127.0.0.1":
            ap.error("--load only targets 127.0.0.1")
        out = asyncio.run(load(args.load, args.connections, args.seconds, args.warmup))
        out["loop"] = loop_name
        print(json.dumps(out), flush=True)
        return
    loop_name = install_uvloop(not args.no_uvloop)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(args.impl, args.latency_ms, args.max_seconds, loop_name, args.record_arrivals)
        )
    sys.stdout.flush()
    os._exit(0)  # do not wait for the stdin-watching thread


if __name__ == "__main__":
    main()
