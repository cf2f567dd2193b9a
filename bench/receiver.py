"""A minimal fast webhook receiver on 127.0.0.1, and a load generator to measure it alone.

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
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from eventsinkd.common.ports import server_port

if TYPE_CHECKING:
    from aiohttp import web

STATS_PATH = "/__stats"
MAX_HEAD_BYTES = 64 * 1024
RESPONSE_204 = b"HTTP/1.1 204 No Content\r\nServer: bench-receiver\r\n\r\n"
RESPONSE_501 = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
RESPONSE_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

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


class Counter:
    """What the receiver reports on ``GET /__stats``."""

    __slots__ = ("arrivals", "first_ns", "last_ns", "received", "requests")

    def __init__(self, record_arrivals: bool = False) -> None:
        self.requests = 0  # POSTs answered
        self.received = 0  # POSTs received (answered or not yet)
        self.first_ns = 0
        self.last_ns = 0
        self.arrivals: dict[str, int] | None = {} if record_arrivals else None

    def arrived(self, webhook_id: str | None) -> None:
        """A POST has been read in full (called before its answer is scheduled)."""
        now = time.monotonic_ns()
        if not self.received:
            self.first_ns = now
        self.last_ns = now
        self.received += 1
        if self.arrivals is not None and webhook_id is not None:
            self.arrivals.setdefault(webhook_id, now)

    def stats_json(self, arrivals: bool = False) -> bytes:
        doc: dict[str, Any] = {
            "requests": self.requests,
            "received": self.received,
            "cpu_s": time.process_time(),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }
        if self.arrivals is not None:
            doc["unique"] = len(self.arrivals)
            if arrivals:
                doc["arrivals"] = self.arrivals
        return json.dumps(doc).encode()


def _wants_arrivals(target: str) -> bool:
    return "arrivals=1" in target.partition("?")[2].split("&")


def _stats_response(counter: Counter, arrivals: bool = False) -> bytes:
    body = counter.stats_json(arrivals)
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- raw asyncio HTTP/1.1 server -------------------------------------------------------


class RawHttp(asyncio.Protocol):
    """Just enough HTTP/1.1: keep-alive, Content-Length bodies, pipelining in order."""

    def __init__(self, counter: Counter, latency_s: float) -> None:
        self.counter = counter
        self.latency_s = latency_s
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.pending = 0  # POSTs waiting for their answer on this connection
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while self.transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._fail(RESPONSE_400)
                return
            raw_head = bytes(buf[:end])
            head = raw_head.lower()
            if b"transfer-encoding:" in head:
                self._fail(RESPONSE_501)  # chunked bodies: not needed by the benchmark
                return
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                try:
                    length = int(head[at + 17 : stop if stop >= 0 else None])
                except ValueError:
                    self._fail(RESPONSE_400)
                    return
            total = end + 4 + length
            if len(buf) < total:
                return
            del buf[:total]
            if b"\r\nconnection: close" in head:
                self.close_after = True
            if head.startswith(b"get " + STATS_PATH.encode()):
                target = head.split(b" ", 2)[1].decode("latin-1")
                self._write(_stats_response(self.counter, _wants_arrivals(target)))
                continue
            webhook_id = None
            if self.counter.arrivals is not None:
                at = head.find(b"\r\nwebhook-id:")
                if at >= 0:  # the value in its original case (lower() keeps the offsets)
                    stop = head.find(b"\r\n", at + 2)
                    value = raw_head[at + 13 : stop if stop >= 0 else None]
                    webhook_id = value.strip().decode("latin-1")
            self.counter.arrived(webhook_id)
            self.pending += 1
            if self.latency_s > 0:
                self.loop.call_later(self.latency_s, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        # Every answer is the same 204, so answering the oldest pending request is exact.
        self.pending -= 1
        if self.transport is None or self.transport.is_closing():
            return
        self.counter.requests += 1
        self._write(RESPONSE_204)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self.close_after and self.pending == 0:
            self.transport.close()

    def _fail(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.close()
        self.transport = None


async def start_raw(counter: Counter, latency_s: float) -> tuple[int, Callable[[], Any]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RawHttp(counter, latency_s), "127.0.0.1", 0, backlog=1024
    )
    port = server_port(server)

    async def close() -> None:
        server.close()

    return port, close


# -- aiohttp server --------------------------------------------------------------------


async def start_aiohttp(counter: Counter, latency_s: float) -> tuple[int, Callable[[], Any]]:
    from aiohttp import web

    async def hook(req: web.Request) -> web.StreamResponse:
        await req.read()
        counter.arrived(req.headers.get("webhook-id"))
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        counter.requests += 1
        return web.Response(status=204)

    async def stats(req: web.Request) -> web.StreamResponse:
        body = counter.stats_json(req.query.get("arrivals") == "1")
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(STATS_PATH, stats)
    app.router.add_post("/{tail:.*}", hook)
    return await serve_app(app)


async def serve_app(app: web.Application) -> tuple[int, Callable[[], Any]]:
    """Serve ``app`` on an ephemeral port of 127.0.0.1: (the port, the coroutine that stops it).
    Also what the soak test's in-process receivers start with."""
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port: int = runner.addresses[0][1]
    return port, runner.cleanup


IMPLS = {"raw": start_raw, "aiohttp": start_aiohttp}


def stop_when_told() -> asyncio.Event:
    """Set on SIGTERM or SIGINT, or when the parent (which holds our stdin) is gone."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:  # the parent holds our stdin: EOF means it is gone
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.buffer.read()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    return stop


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


def _install_uvloop(allowed: bool) -> str:
    if allowed:
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
    return "asyncio"


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
        loop_name = _install_uvloop(args.uvloop)
        if args.uvloop and loop_name != "uvloop":
            ap.error("--uvloop: uvloop is not installed")
        host = args.load.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        if host != "127.0.0.1":
            ap.error("--load only targets 127.0.0.1")
        out = asyncio.run(load(args.load, args.connections, args.seconds, args.warmup))
        out["loop"] = loop_name
        print(json.dumps(out), flush=True)
        return
    loop_name = _install_uvloop(not args.no_uvloop)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(args.impl, args.latency_ms, args.max_seconds, loop_name, args.record_arrivals)
        )
    sys.stdout.flush()
    os._exit(0)  # do not wait for the stdin-watching thread


if __name__ == "__main__":
    main()
