"""Ports on this machine: a free one to hand to a child process, and the one a server got."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web


def free_port(host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A TCP (or, with ``kind=SOCK_DGRAM``, UDP) port nothing uses (at the time of asking)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def listening_port(runner: web.AppRunner) -> int:
    """The port a started aiohttp server listens on (the one the OS chose for port 0)."""
    port: int = runner.addresses[0][1]
    return port


def server_port(server: asyncio.Server) -> int:
    """The port a started asyncio server listens on (the one the OS chose for port 0)."""
    port: int = server.sockets[0].getsockname()[1]
    return port
