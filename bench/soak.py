"""``make soak``: a long steady run of the real daemon, watching for leaks and drift.

The Nexus-like writer appends at a steady rate (with rotation and periodic
status rewrites); ``eventsinkd run`` delivers to a healthy receiver and to a
flaky one (every 7th request answers 503). Every minute it prints the daemon's
RSS and open file descriptors (both must stay flat); every window it prints
the p50/p99 latency from a batch's fsync to its arrival at the healthy
receiver; at the end it prints the accounting per sink.

    python -m bench.soak [--minutes 30] [--rate 500] [--window-minutes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from bench import proc_status_kib
from eventsinkd.devtools.child import DaemonDir
from eventsinkd.devtools.peers.serving import serve_app
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

HEALTHY, FLAKY = "healthy", "flaky"


class Receiver:
    def __init__(self, fail_every: int = 0) -> None:
        self.fail_every = fail_every
        self.requests = 0
        self.arrivals: dict[str, float] = {}
        self.port = 0
        self._close: Callable[[], Any] | None = None

    async def _handle(self, req: web.Request) -> web.Response:
        await req.read()
        self.requests += 1
        if self.fail_every and self.requests % self.fail_every == 0:
            return web.Response(status=503)
        self.arrivals.setdefault(req.headers["webhook-id"], time.time())
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.port, self._close = await serve_app(app)

    async def stop(self) -> None:
        if self._close is not None:
            await self._close()


def proc_figures(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process, from /proc."""
    rss_kb = proc_status_kib(pid, ("VmRSS",))["VmRSS"]
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def pct(values: list[float], q: int) -> float:
    """Interpolated percentile (statistics.quantiles), not ``bench.percentile``'s nearest rank."""
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


async def soak(minutes: float, rate: float, window_minutes: float) -> int:
    root = Path(tempfile.mkdtemp(prefix="eventsinkd-soak-"))
    child = DaemonDir(root)
    wal = child.wal
    healthy, flaky = Receiver(), Receiver(fail_every=7)
    await healthy.start()
    await flaky.start()
    admin_port = child.admin_port
    child.write_config(
        [
            {"name": HEALTHY, "url": f"http://127.0.0.1:{healthy.port}/hook"},
            {"name": FLAKY, "url": f"http://127.0.0.1:{flaky.port}/hook", "max_retries": 5},
        ],
        wal={"start_at": "beginning"},
        events={"retry_backoff_seconds": [0.5, 1, 2]},
        log={"level": "warning", "format": "text"},
    )
    log = child.log.open("wb")
    daemon = await asyncio.create_subprocess_exec(*child.argv(), stdout=log, stderr=log)
    fsynced: dict[str, float] = {}
    stop = threading.Event()
    written = [0]

    def write() -> None:
        w = NexusWriter(wal, max_segment_bytes=8 * 1024 * 1024, checkpoint_every=1000)
        batch = max(1, int(rate / 50))
        start = time.monotonic()
        while not stop.is_set():
            recs = w.append(batch)
            now = time.time()
            for r in recs:
                if r.entry_type == "":
                    fsynced[f"memory_written:{r.payload_id}"] = now
            written[0] += batch
            if written[0] % 2000 < batch:
                w.rewrite_recent()
            delay = start + written[0] / rate - time.monotonic()
            if delay > 0:
                stop.wait(delay)
        w.close()

    print(f"soak: {minutes} min at {rate:.0f} events/s; daemon pid {daemon.pid}; dir {root}")
    print(f"{'minute':>6} {'written':>9} {'healthy':>9} {'flaky':>9} {'RSS MiB':>8} {'fds':>5}")
    writer = threading.Thread(target=write, daemon=True)
    await asyncio.sleep(1.0)
    writer.start()
    t0 = time.monotonic()
    window_start = 0.0
    rss_series: list[float] = []
    fd_series: list[int] = []
    minute = 0
    while time.monotonic() - t0 < minutes * 60:
        await asyncio.sleep(min(60.0, minutes * 60))
        minute += 1
        rss, fds = proc_figures(daemon.pid)
        rss_series.append(rss)
        fd_series.append(fds)
        print(
            f"{minute:>6} {written[0]:>9} {len(healthy.arrivals):>9} "
            f"{len(flaky.arrivals):>9} {rss:>8.1f} {fds:>5}",
            flush=True,
        )
        if minute % window_minutes == 0 or time.monotonic() - t0 >= minutes * 60:
            now = time.time()
            lat = [
                healthy.arrivals[k] - t
                for k, t in list(fsynced.items())
                if window_start <= t < now - 5 and k in healthy.arrivals
            ]
            print(
                f"       window to minute {minute}: latency p50 {pct(lat, 50) * 1000:.1f} ms, "
                f"p99 {pct(lat, 99) * 1000:.1f} ms over {len(lat)} events",
                flush=True,
            )
            window_start = now - 5
    stop.set()
    writer.join()
    await asyncio.sleep(10)  # let the last deliveries and retries finish
    status = None
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin_port}/status") as r:
        status = await r.json()
    daemon.send_signal(signal.SIGTERM)
    code = await daemon.wait()
    await healthy.stop()
    await flaky.stop()
    total = len(fsynced)
    print(f"written {total} memory_written events; daemon exit code {code}")
    ok = code == 0
    for name, rec in ((HEALTHY, healthy), (FLAKY, flaky)):
        st = status["sinks"][name]
        balance = st["delivered"] + st["failed"] + st["dropped"] + st["queue_depth"]
        print(
            f"  {name}: delivered {st['delivered']}, failed {st['failed']}, dropped "
            f"{st['dropped']}, queued {st['queue_depth']}; received {len(rec.arrivals)}; "
            f"offered {st['offered']} {'=' if balance == st['offered'] else '!='} sum"
        )
        ok &= balance == st["offered"] == total
    if len(rss_series) >= 3:
        print(
            f"RSS MiB: first {rss_series[0]:.1f}, max {max(rss_series):.1f}, "
            f"last {rss_series[-1]:.1f}; fds: first {fd_series[0]}, max {max(fd_series)}, "
            f"last {fd_series[-1]}"
        )
    shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--window-minutes", type=int, default=5)
    args = ap.parse_args()
    return asyncio.run(soak(args.minutes, args.rate, args.window_minutes))


if __name__ == "__main__":
    raise SystemExit(main())
