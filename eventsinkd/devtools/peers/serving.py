"""Running one of our peers in a child process of its own (so that its CPU is not the
parent's): serve an aiohttp app on an ephemeral port, stop when told, prefer uvloop; and
what the benchmarks' counting peers report on ``GET /__stats`` (:class:`Counts`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

STATS_PATH = "/__stats"


async def serve_app(app: web.Application) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Serve ``app`` on an ephemeral port of 127.0.0.1: (the port, the coroutine that stops
    it). Also what the soak test's in-process receivers start with."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port: int = runner.addresses[0][1]
    return port, runner.cleanup


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


def install_uvloop(allowed: bool) -> str:
    """Run on uvloop when allowed and installed; the name of the loop in use."""
    if allowed:
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
    return "asyncio"


class Counts:
    """What a counting peer (OTLP, Forward) reports on ``GET /__stats``."""

    __slots__ = ("errors", "first_ns", "last_ns", "received", "requests")

    def __init__(self) -> None:
        self.received = 0  # events (log records, Forward entries)
        self.requests = 0  # HTTP requests, Forward messages
        self.errors = 0
        self.first_ns = 0
        self.last_ns = 0

    def arrived(self, events: int) -> None:
        now = time.monotonic_ns()
        if not self.requests:
            self.first_ns = now
        self.last_ns = now
        self.requests += 1
        self.received += events

    def doc(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "requests": self.requests,
            "errors": self.errors,
            "cpu_s": time.process_time(),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }


def stats_app(counts: Counts) -> web.Application:
    """An app answering ``GET /__stats`` with ``counts``."""

    async def stats(_req: web.Request) -> web.StreamResponse:
        return web.json_response(counts.doc())

    app = web.Application()
    app.router.add_get(STATS_PATH, stats)
    return app


# A counting peer started in its child process: (its port, its stats port, what stops it).
CountingPeer = tuple[int, int, Callable[[], Awaitable[None]]]
