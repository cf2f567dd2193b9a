"""The admin HTTP server: /metrics, /healthz, /readyz and /status, on the daemon's event loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eventsinkd.events import parse_go_time
from eventsinkd.wal.lines import Reject

if TYPE_CHECKING:
    from eventsinkd.daemon import Daemon


class ReaderCollector(Collector):
    """WAL reader figures, read from the scanner at scrape time (nothing on the hot path)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        scanner = self.daemon.scanner
        if scanner is None:
            return
        st = scanner.stats
        yield CounterMetricFamily(
            "eventsinkd_wal_lines_read", "WAL lines read (complete lines).", value=st.lines
        )
        entries = CounterMetricFamily(
            "eventsinkd_wal_entries", "WAL entries decoded, by entry type.", labels=["entry_type"]
        )
        for kind, n in sorted(st.entries.items()):
            entries.add_metric([kind or "data"], n)
        yield entries
        rejected = CounterMetricFamily(
            "eventsinkd_wal_lines_rejected", "WAL lines skipped, by reason.", labels=["reason"]
        )
        for reason in Reject:
            rejected.add_metric([reason.value], st.rejected.get(reason.value, 0))
        yield rejected
        yield CounterMetricFamily(
            "eventsinkd_wal_duplicates",
            "Entries skipped because their idempotency key was just seen (rotation crash).",
            value=st.duplicates,
        )
        yield CounterMetricFamily(
            "eventsinkd_wal_rewrites", "Segment rewrites (new inode) noticed.", value=st.rewrites
        )
        yield GaugeMetricFamily(
            "eventsinkd_wal_segments", "Segment files in the WAL directory.", value=st.segments
        )
        lag = self.daemon.lag()
        yield GaugeMetricFamily(
            "eventsinkd_wal_bytes_behind", "WAL bytes not yet read.", value=lag["bytes_behind"]
        )
        yield GaugeMetricFamily(
            "eventsinkd_wal_seconds_behind",
            "Age of the last entry read while unread bytes remain; 0 when caught up.",
            value=lag["seconds_behind"],
        )
        yield GaugeMetricFamily(
            "eventsinkd_ready",
            "1 when the WAL is readable and the reader runs.",
            value=1.0 if self.daemon.ready else 0.0,
        )


def lag_of(bytes_behind: int, last_timestamp: str) -> dict[str, float]:
    seconds = 0.0
    if bytes_behind > 0:
        ts = parse_go_time(last_timestamp)
        seconds = max(0.0, time.time() - ts) if ts is not None else 0.0
    return {"bytes_behind": float(bytes_behind), "seconds_behind": seconds}


class AdminServer:
    def __init__(
        self, host: str, port: int, daemon: Daemon, status: Callable[[], dict[str, Any]]
    ) -> None:
        self.host = host
        self.port = port
        self.daemon = daemon
        self._status = status
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status_json)
        self._app = app

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self.daemon.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _req: web.Request) -> web.Response:
        problems = self.daemon.problems()
        ready = self.daemon.ready
        return web.json_response(
            {"ready": ready, "problems": problems}, status=200 if ready else 503
        )

    async def _status_json(self, _req: web.Request) -> web.Response:
        return web.json_response(self._status())
