"""Run `eventsinkd run` as a real subprocess for tests: config, readiness, metrics, signals."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from eventsinkd.devtools.child import DaemonDir, command
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.state.positions import PositionStore, cursor_file
from eventsinkd.wal.position import Position

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


class Daemon(DaemonDir):
    """One `eventsinkd run` subprocess with its config file and admin URL.

    Several Daemons made in one ``root`` share its WAL, state and config: a restart."""

    def __init__(self, root: Path, sinks: list[dict[str, Any]], **events: Any) -> None:
        super().__init__(root)
        self.proc: asyncio.subprocess.Process | None = None
        self.write_config(sinks, **events)

    def write_config(self, sinks: list[dict[str, Any]], **events: Any) -> dict[str, Any]:
        return super().write_config(
            sinks,
            wal={"start_at": "beginning", "poll_interval_s": 0.1},
            events={"retry_backoff_seconds": [0.1], "shutdown_timeout_s": 5, **events},
            state_save_interval_s=0.2,
            log={"level": "info", "format": "json"},
        )

    async def start(self, *, wait: bool = True, **popen: Any) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdout=log, stderr=log, **popen
            )
        if wait:
            await self.wait_ready()

    async def wait_ready(self, timeout_s: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()
            if await asyncio.to_thread(self.ready):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"daemon not ready:\n{self.log.read_text()}")

    def cursor_path(self, sink: str) -> Path:
        return self.root / "state" / cursor_file(sink)

    def saved_cursor(self, sink: str) -> Position | None:
        return PositionStore(self.root / "state", self.wal, cursor_file(sink)).load()

    async def get(self, path: str) -> str:
        async with aiohttp.ClientSession() as s, s.get(f"{self.admin}{path}") as r:
            return await r.text()

    async def metric(self, name: str, sink: str) -> float:
        text = await self.get("/metrics")
        m = re.search(rf'^{name}{{sink="{sink}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, timeout_s: float = 15) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)


def run_cli(
    *args: str | Path, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m eventsinkd ARGS`` as a real subprocess."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


async def eventsinkd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``eventsinkd ARGS`` as a subprocess, off the event loop (receivers keep answering)."""
    return await asyncio.to_thread(run_cli, *args)


async def cli(*args: str | Path) -> int:
    """Exit code of ``eventsinkd ARGS`` run as a subprocess."""
    return (await eventsinkd(*args)).returncode


async def until(cond: Any, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def expected_ids(w: NexusWriter) -> set[str]:
    return {f"memory_written:{x.payload_id}" for x in w.expected_data()}


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample from Prometheus text (labels in any order); 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


async def settle(
    d: Daemon, timeout_s: float = 60, holding: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Wait until the daemon has read everything and every sink (but ``holding``) holds nothing."""
    import json

    def idle(status: dict[str, Any]) -> bool:
        sinks = status["sinks"]
        return status["lag"]["bytes_behind"] == 0 and all(
            s["queue_depth"] == 0 for name, s in sinks.items() if name not in holding
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        status = json.loads(await d.get("/status"))
        if idle(status):
            await asyncio.sleep(0.3)
            again = json.loads(await d.get("/status"))
            cursors = [s["cursor"] for s in status["sinks"].values()]
            if [s["cursor"] for s in again["sinks"].values()] == cursors and idle(again):
                return again
        assert loop.time() < deadline, f"daemon did not settle: {status}"
        await asyncio.sleep(0.1)


async def accounting(d: Daemon, sink: str) -> tuple[int, int, int]:
    """(delivered, failed, dropped) from the daemon's /metrics."""
    text = await d.get("/metrics")
    return (
        int(metric_value(text, "bubblefish_events_delivered_total", sink=sink)),
        int(metric_value(text, "bubblefish_events_failed_total", sink=sink)),
        int(metric_value(text, "bubblefish_events_dropped_total", sink=sink)),
    )


# -- added with tests/state/test_cursors.py ----------------------------------------------


async def status(d: Daemon) -> dict[str, Any]:
    """The daemon's /status document."""
    import json

    doc: dict[str, Any] = json.loads(await d.get("/status"))
    return doc


async def until_status(
    d: Daemon, cond: Any, timeout_s: float = 60, what: str = "condition"
) -> dict[str, Any]:
    """Poll /status until ``cond(status)`` holds; that status. Fails loudly with the last one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        doc = await status(d)
        if cond(doc):
            return doc
        assert loop.time() < deadline, f"{what}: not within {timeout_s}s; last /status: {doc}"
        await asyncio.sleep(0.05)


async def until_metric(
    d: Daemon, name: str, at_least: float, timeout_s: float = 60, **labels: str
) -> float:
    """Poll /metrics until the sample ``name{labels}`` reaches ``at_least``; its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = metric_value(await d.get("/metrics"), name, **labels)
        if value >= at_least:
            return value
        assert loop.time() < deadline, f"{name}{labels} = {value} < {at_least} in {timeout_s}s"
        await asyncio.sleep(0.05)


async def reload(d: Daemon, sinks: list[dict[str, Any]], **events: Any) -> None:
    """Rewrite the config, SIGHUP, and wait until the daemon counts one more successful reload."""
    name = "eventsinkd_config_reloads_total"
    done = metric_value(await d.get("/metrics"), name, result="success")
    d.write_config(sinks, **events)
    d.signal(signal.SIGHUP)
    await until_metric(d, name, done + 1, result="success")


async def kill9(d: Daemon) -> None:
    """``kill -9`` the daemon and wait until it is gone (its state-directory lock goes with it)."""
    assert d.proc is not None
    d.proc.kill()
    await d.proc.wait()


async def received_all(server: Any, want: set[str], timeout_s: float = 60) -> None:
    """Wait until a WebhookServer has received every webhook-id in ``want``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while missing := want - set(server.ids):
        assert loop.time() < deadline, (
            f"{len(missing)} of {len(want)} events not received in {timeout_s}s"
        )
        await asyncio.sleep(0.05)


def memory_kib(pid: int) -> dict[str, int]:
    """The Vm* lines of /proc/<pid>/status in KiB (VmRSS now, VmHWM its peak)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


# -- added with tests/state/test_dead_letters.py and tests/state/test_rewind.py ---------


def webhook_ids(w: NexusWriter) -> list[str]:
    """The webhook-ids of the written events, in WAL order."""
    return [f"memory_written:{x.payload_id}" for x in w.expected_data()]


async def sink_status(d: Daemon, sink: str = "s") -> dict[str, Any]:
    sinks: dict[str, dict[str, Any]] = (await status(d))["sinks"]
    return sinks[sink]


async def wait_cursor_at_end(
    d: Daemon, w: NexusWriter, sink: str = "s", timeout_s: float = 30
) -> None:
    """Wait until the saved cursor of ``sink`` is past the last written entry."""
    last = w.expected_data()[-1]
    end = (last.segment, last.line + 1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (saved := d.saved_cursor(sink)) is None or saved.key() < end:
        assert loop.time() < deadline, f"saved cursor of {sink} stays at {saved}, before {end}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def daemons(root: Path) -> AsyncIterator[Callable[..., Daemon]]:
    """Makes Daemons in ``root``; kills any still running on the way out (a failed test)."""
    made: list[Daemon] = []

    def make(sinks: list[dict[str, Any]], **events: Any) -> Daemon:
        made.append(Daemon(root, sinks, **events))
        return made[-1]

    try:
        yield make
    finally:
        for d in made:
            if d.proc is not None and d.proc.returncode is None:
                d.proc.kill()
                await d.proc.wait()


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    try:
        yield srv
    finally:
        await srv.stop()
