"""Deployment files: the systemd unit, the Dockerfile, and sd_notify from a real daemon."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import need_tool

from eventsinkd.devtools.child import DaemonDir

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "eventsinkd.service"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze", "systemd")
    exe = shutil.which("eventsinkd") or str(Path(sys.executable).parent / "eventsinkd")
    unit = tmp_path / "eventsinkd.service"
    unit.write_text(UNIT.read_text().replace("/opt/eventsinkd/bin/eventsinkd", exe))
    res = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "eventsinkd.service" not in res.stderr, res.stderr  # no warnings about the unit


def test_systemd_unit_has_what_operators_rely_on() -> None:
    text = UNIT.read_text()
    for directive in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=",
        "StateDirectory=eventsinkd",
        "ReadOnlyPaths=",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "PrivateTmp=true",
    ):
        assert directive in text


def test_dockerfile_installs_like_make() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    assert "pip install" in make and "python -m pip install --no-cache-dir ." in docker
    for needle in (
        "ARG UID",
        "USER eventsinkd",
        "HEALTHCHECK",
        'eventsinkd", "health", "-c", "/etc/eventsinkd/config.yaml"',  # its admin.listen
        "ARG BASE_IMAGE=python:3",
        "FROM ${BASE_IMAGE}",
        "EXPOSE 9464",
        "VOLUME",
    ):
        assert needle in docker


def test_sd_notify_ready_reload_watchdog_stopping(tmp_path: Path) -> None:
    child = DaemonDir(tmp_path)
    child.write_config([])
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        child.argv(),
        env=env,
        stderr=subprocess.DEVNULL,
    )
    messages: list[str] = []

    def wait_for(field: str) -> None:
        deadline = time.monotonic() + 20
        while not any(field in m for m in messages):
            assert time.monotonic() < deadline, messages
            messages.append(sock.recv(4096).decode())

    try:
        wait_for("READY=1")
        wait_for("WATCHDOG=1")
        wait_for("STATUS=")
        proc.send_signal(signal.SIGHUP)
        wait_for("RELOADING=1")
        proc.send_signal(signal.SIGTERM)
        wait_for("STOPPING=1")
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        sock.close()
