"""A real tinyproxy (Debian package ``tinyproxy``) for tests: its config written in a temporary
directory, listening on a free port of 127.0.0.1, run in the foreground as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import need_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Tinyproxy:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """The request lines tinyproxy has logged ("CONNECT 127.0.0.1:443 HTTP/1.1", ...)."""
        text = self.log.read_text(errors="replace")
        return re.findall(r"Request \(file descriptor \d+\): (.+)$", text, re.M)


@asynccontextmanager
async def tinyproxy(
    root: Path, connect_ports: list[int], basic_auth: tuple[str, str] | None = None
) -> AsyncIterator[Tinyproxy]:
    """tinyproxy allowing 127.0.0.1, CONNECT to ``connect_ports`` only, and asking for
    ``basic_auth`` (user, password) if given."""
    exe = need_tool("tinyproxy", "tinyproxy")
    port = free_port()
    log = root / f"tinyproxy-{port}.log"
    conf = root / f"tinyproxy-{port}.conf"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "Allow 127.0.0.1",
        "LogLevel Info",
        f'LogFile "{log}"',
        "MaxClients 64",
        "DisableViaHeader Yes",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    conf.write_text("\n".join(lines) + "\n")
    log.touch()
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-d",
        "-c",
        str(conf),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            assert proc.returncode is None, f"tinyproxy exited ({conf}):\n{log.read_text()}"
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            assert loop.time() < deadline, f"tinyproxy did not listen:\n{log.read_text()}"
            await asyncio.sleep(0.05)
        yield Tinyproxy(port, log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
