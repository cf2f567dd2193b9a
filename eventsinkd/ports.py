"""TCP ports on this machine: a free one to hand to a child process, and the one a server got."""

from __future__ import annotations

import socket

from aiohttp import web


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def listening_port(runner: web.AppRunner) -> int:
    """The port a started aiohttp server listens on (the one the OS chose for port 0)."""
    port: int = runner.addresses[0][1]
    return port
