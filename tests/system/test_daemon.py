"""`eventsinkd run` as a real subprocess, a real WAL writer and real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import SECRET, Daemon, cli, expected_ids, until
from standardwebhooks.webhooks import Webhook

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookServer]:
    srv = await WebhookServer().start()
    yield srv
    await srv.stop()


async def test_run_delivers_reloads_and_restarts(tmp_path: Path, receiver: WebhookServer) -> None:
    second = await WebhookServer().start()
    d = Daemon(tmp_path, [{"name": "a", "url": receiver.url, "secret": SECRET}])
    w = NexusWriter(d.wal, max_segment_bytes=64 * 1024, checkpoint_every=50)
    try:
        await d.start()
        for _ in range(10):
            w.append(30)
        w.rewrite_recent()
        await until(lambda: set(receiver.ids) >= expected_ids(w))
        assert sorted(receiver.ids) == sorted(expected_ids(w))  # each exactly once
        assert await d.metric("bubblefish_events_delivered_total", "a") == 300
        for r in receiver.requests[:5]:
            Webhook(SECRET).verify(r.body, r.headers)

        # SIGHUP with a second sink: delivery to it starts, sink a keeps going.
        d.write_config(
            [{"name": "a", "url": receiver.url, "secret": SECRET}, {"name": "b", "url": second.url}]
        )
        d.signal(signal.SIGHUP)
        await until(lambda: '"b"' in d.log.read_text() or "added sink b" in d.log.read_text())
        w.append(20)
        await until(lambda: len(second.requests) >= 20)
        assert 'eventsinkd_config_reloads_total{result="success"} 1.0' in await d.get("/metrics")

        # An invalid file on SIGHUP: the running config stays, the failure is counted.
        d.config.write_text("wal: {dir: 1\n")
        d.signal(signal.SIGHUP)
        await until(lambda: "reload failed" in d.log.read_text())
        w.append(20)
        await until(lambda: len(second.requests) >= 40)
        await until(lambda: set(receiver.ids) >= expected_ids(w))
        assert 'eventsinkd_config_reloads_total{result="failure"} 1.0' in await d.get("/metrics")

        # SIGTERM mid-stream: exits 0 and saves the position.
        def write_more() -> None:
            for _ in range(30):
                w.append(10)

        before = len(w.expected_data())
        writing = asyncio.ensure_future(asyncio.to_thread(write_more))
        await until(lambda: len(w.expected_data()) > before)  # the writer is under way
        assert await d.stop() == 0
        await writing
        assert d.saved_cursor("a") is not None and d.saved_cursor("b") is not None
        assert "stopped at" in d.log.read_text()
        # Restart with the same (valid) config: resumes, does not re-send.
        d.write_config([{"name": "a", "url": receiver.url, "secret": SECRET}])
        await d.start()
        await until(lambda: set(receiver.ids) >= expected_ids(w))
        await asyncio.sleep(0.5)  # not a synchronisation: room for a re-send to show up
        assert sorted(receiver.ids) == sorted(expected_ids(w))
        assert await d.stop() == 0
    finally:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()
        await second.stop()


async def test_status_readyz_and_metrics(tmp_path: Path, receiver: WebhookServer) -> None:
    d = Daemon(tmp_path, [{"name": "a", "url": receiver.url}])
    w = NexusWriter(d.wal, precreate=False)
    w.append(5)
    (d.wal / "wal-0.jsonl").write_bytes(b"not a wal line\n")
    try:
        await d.start()
        await until(lambda: len(receiver.requests) >= 5)

        # The receiver logs a request before it answers: wait for the daemon to count it.
        async def counted() -> None:
            while await d.metric("bubblefish_events_delivered_total", "a") < 5:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(counted(), 30)
        status = await d.get("/status")
        assert '"ready": true' in status and '"queue_depth": 0' in status
        sink = json.loads(status)["sinks"]["a"]
        assert (sink["type"], sink["url"]) == ("webhook", receiver.url)
        metrics = await d.get("/metrics")
        assert 'eventsinkd_wal_lines_rejected_total{reason="partial"} 1.0' in metrics
        assert "eventsinkd_wal_bytes_behind 0.0" in metrics
        assert 'eventsinkd_delivery_attempts_total{outcome="delivered",sink="a"} 5.0' in metrics
        assert await cli("health", "--url", f"{d.admin}/readyz") == 0
    finally:
        assert await d.stop() == 0


async def test_missing_wal_dir_is_not_ready_then_ready(
    tmp_path: Path, receiver: WebhookServer
) -> None:
    d = Daemon(tmp_path, [{"name": "a", "url": receiver.url}])
    d.wal.rmdir()
    await d.start(wait=False)
    try:
        await until(lambda: "does not exist" in d.log.read_text())
        readyz = await d.get("/readyz")
        assert "does not exist" in readyz
        assert await cli("health", "--url", f"{d.admin}/readyz") == 1
        w = NexusWriter(d.wal, precreate=False)
        w.append(3)
        await d.wait_ready()
        await until(lambda: len(receiver.requests) >= 3)
    finally:
        assert await d.stop() == 0


async def test_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("wal: {dir: /w}\nunknown: 1\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eventsinkd",
        "run",
        "-c",
        str(bad),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"unknown (line 2): unknown key" in err
    # The admin port is taken: start-up failure, exit 3.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = Daemon(tmp_path, [])
        d.admin_port = port
        d.write_config([])
        await d.start(wait=False)
        assert d.proc is not None
        assert await asyncio.wait_for(d.proc.wait(), 30) == 3
        assert "cannot listen on" in d.log.read_text()


async def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    hang = WebhookServer()

    async def never(_n: int, _r: Any) -> Any:
        await asyncio.sleep(60)

    hang.behaviour = never
    await hang.start()
    d = Daemon(
        tmp_path, [{"name": "a", "url": hang.url, "timeout_seconds": 60}], shutdown_timeout_s=60
    )
    w = NexusWriter(d.wal, precreate=False)
    w.append(10)
    try:
        await d.start()
        await until(lambda: len(hang.requests) >= 4)
        d.signal(signal.SIGTERM)
        await until(lambda: "received SIGTERM" in d.log.read_text())
        assert d.proc is not None and d.proc.returncode is None  # draining, up to 60 s
        d.signal(signal.SIGINT)
        assert await asyncio.wait_for(d.proc.wait(), 10) == 0
        assert "second signal: stopping now" in d.log.read_text()
        assert "left undelivered at shutdown" in d.log.read_text()
    finally:
        await hang.stop()


def test_demo_reports_every_event_arrived(tmp_path: Path) -> None:
    import subprocess

    res = subprocess.run(
        [sys.executable, "-m", "eventsinkd", "demo", "--events", "2000", "--rate", "2000"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK: every written event arrived" in res.stdout
    assert "events received:           2000 (0 repeated, 0 bad signatures)" in res.stdout


async def test_one_daemon_per_state_directory(tmp_path: Path, receiver: WebhookServer) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = Daemon(tmp_path / "a", [{"name": "a", "url": receiver.url}])
    second = Daemon(tmp_path / "b", [{"name": "a", "url": receiver.url}])
    # The second daemon's config points at the first one's state directory.
    second.config.write_text(
        second.config.read_text().replace(str(second.root / "state"), str(first.root / "state"))
    )
    await first.start()
    try:
        await second.start(wait=False)
        assert second.proc is not None
        assert await asyncio.wait_for(second.proc.wait(), 60) == 3
        assert "is in use by eventsinkd run (pid" in second.log.read_text()
    finally:
        assert await first.stop() == 0


async def test_an_unusable_state_directory_is_a_start_up_failure(
    tmp_path: Path, receiver: WebhookServer
) -> None:
    d = Daemon(tmp_path, [{"name": "a", "url": receiver.url}])
    (tmp_path / "state").write_text("a file where the state directory should be")
    await d.start(wait=False)
    assert d.proc is not None
    assert await asyncio.wait_for(d.proc.wait(), 30) == 3
    assert "cannot use the state directory" in d.log.read_text()


async def test_a_reader_that_dies_makes_the_daemon_exit_1(tmp_path: Path) -> None:
    """An unexpected error in the reader (a bug: the one thing here that cannot be driven from
    outside, so the scanner's step is replaced with one that raises, in the real daemon
    process) ends the daemon with exit 1 and the traceback in its log, for systemd to
    restart it; it does not hang on half alive."""
    d = Daemon(tmp_path, [{"name": "a", "url": "http://127.0.0.1:9/hook"}])
    NexusWriter(d.wal, precreate=False).append(3)
    broken = (
        "import sys\n"
        "from eventsinkd.wal import scanner\n"
        "def step(self):\n"
        "    raise RuntimeError('a bug in the reader')\n"
        "scanner.WalScanner.step = step\n"
        "from eventsinkd.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    with d.log.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", broken, "run", "-c", str(d.config), stdout=log, stderr=log
        )
    assert await asyncio.wait_for(proc.wait(), 60) == 1
    text = d.log.read_text()
    assert "the WAL reader of sink a failed" in text
    assert "RuntimeError: a bug in the reader" in text
