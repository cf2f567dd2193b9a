"""``eventsinkd demo``: a Nexus-like writer, the real daemon and a receiver, on this machine.

Everything lives in a temporary directory and on 127.0.0.1: the writer appends
memory writes in Nexus's format (HMAC, checkpoints, rotation with pre-created
segments, status rewrites), ``eventsinkd run`` tails that WAL as a subprocess,
and a receiver verifies every signature. Progress is shown live; the summary
says whether every written event arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from eventsinkd.devtools.child import DaemonDir
from eventsinkd.devtools.peers.webhook import Receiver
from eventsinkd.devtools.sim.nexus_writer import NexusWriter, run_workload

SETTLE_TIMEOUT_S = 60.0  # after the last write, how long to wait for the last deliveries


def _write_config(child: DaemonDir, receiver_port: int, secret: str, mac_key: str) -> Path:
    child.write_config(
        [
            {
                "name": "demo-receiver",
                "url": f"http://127.0.0.1:{receiver_port}/hook",
                "secret": secret,
                "concurrency": 8,
            }
        ],
        wal={"start_at": "beginning", "mac_key": mac_key, "poll_interval_s": 0.2},
        events={"overflow": "block", "retry_backoff_seconds": [0.5, 1, 2], "shutdown_timeout_s": 5},
        log={"level": "info", "format": "text"},
    )
    return child.config


class _Progress:
    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._last_line = 0.0

    def show(self, text: str, final: bool = False) -> None:
        if self.tty:
            print(f"\r{text:<110}", end="\n" if final else "", flush=True)
        elif final or time.monotonic() - self._last_line >= 1.0:
            self._last_line = time.monotonic()
            print(text, flush=True)


async def _status(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            doc: dict[str, Any] = await resp.json()
            return doc
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def _demo(root: Path, events: int, rate: float) -> int:
    key = secrets.token_bytes(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    mac_key = secrets.token_hex(16)
    receiver = Receiver([key], out=None)
    await receiver.start()
    child = DaemonDir(root)
    admin_port = child.admin_port
    config = _write_config(child, receiver.port, secret, mac_key)
    log_path = child.log
    print(f"demo directory: {root}")
    print(f"  WAL {root / 'wal'} | config {config} | daemon log {log_path}")
    print(f"  receiver http://127.0.0.1:{receiver.port}/hook (verifying signatures)")
    print(f"  metrics  http://127.0.0.1:{admin_port}/metrics   status /status")
    with log_path.open("wb") as log_file:
        daemon = await asyncio.create_subprocess_exec(
            *child.argv(),
            stdout=log_file,
            stderr=log_file,
        )
    writer_box: list[NexusWriter] = []
    appended = [0]

    def write() -> None:
        writer_box.append(
            run_workload(
                root / "wal",
                events,
                batch=max(1, int(rate // 50)),
                rewrite_every=500,
                rate_per_s=rate,
                mac_key=mac_key.encode(),
                checkpoint_every=100,
                max_segment_bytes=512 * 1024,
                seed=int(time.time()),
                progress=lambda n: appended.__setitem__(0, n),
            )
        )

    writer_thread = threading.Thread(target=write, name="nexus-writer", daemon=True)
    writer_thread.start()
    progress = _Progress()
    status: dict[str, Any] | None = None
    last_change = time.monotonic()
    last_seen = -1
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(0.25)
            status = await _status(session, f"http://127.0.0.1:{admin_port}/status") or status
            sink = (status or {}).get("sinks", {}).get("demo-receiver", {})
            lag = (status or {}).get("lag", {}).get("bytes_behind", 0)
            written = len(writer_box[0].expected_data()) if writer_box else None
            progress.show(
                f"written {appended[0]:>6} | "
                f"received {receiver.unique:>6} | delivered {sink.get('delivered', 0):>6} | "
                f"dropped {sink.get('dropped', 0)} | failed {sink.get('failed', 0)} | "
                f"lag {int(lag)} B"
            )
            if daemon.returncode is not None:
                break
            if receiver.unique != last_seen:
                last_seen, last_change = receiver.unique, time.monotonic()
            if written is not None and (
                receiver.unique >= written or time.monotonic() - last_change > SETTLE_TIMEOUT_S
            ):
                break
        progress.show("", final=True)
    if daemon.returncode is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(daemon.wait(), 30)
    except TimeoutError:
        daemon.kill()
        code = await daemon.wait()
    await receiver.stop()
    writer_thread.join(timeout=5)
    written = len(writer_box[0].expected_data()) if writer_box else 0
    ok = code == 0 and written == events and receiver.unique == written
    print(f"memory writes in the WAL:  {written}")
    print(
        f"events received:           {receiver.unique} "
        f"({receiver.duplicates} repeated, {receiver.bad_signatures} bad signatures)"
    )
    print(f"daemon exit code:          {code}")
    if ok:
        print("OK: every written event arrived, signed, exactly once per webhook-id.")
    else:
        print("FAILED: not every written event arrived; daemon log follows", file=sys.stderr)
        print(log_path.read_text()[-4000:], file=sys.stderr)
    return 0 if ok else 1


def run_demo(events: int, rate: float, keep: bool) -> int:
    root = Path(tempfile.mkdtemp(prefix="eventsinkd-demo-"))
    try:
        return asyncio.run(_demo(root, events, rate))
    finally:
        if keep:
            print(f"kept {root}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)
