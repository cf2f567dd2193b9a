"""Log format: ``log.format: auto`` (the default) writes text to a terminal and JSON lines
anywhere else; the real daemon, its stderr a pseudo-terminal or a pipe."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

from eventsinkd.devtools.child import DaemonDir


def first_line(fd: int, timeout_s: float = 30) -> str:
    buf = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"no log line within {timeout_s}s: {buf!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"stderr closed: {buf!r}"
            buf += chunk
    return buf.split(b"\n", 1)[0].decode().rstrip("\r")


def start(tmp_path: Path, stderr: int, fmt: str | None) -> subprocess.Popen[bytes]:
    child = DaemonDir(tmp_path)
    child.write_config([], **({"log": {"format": fmt}} if fmt else {}))
    return subprocess.Popen(child.argv(), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)


def run_and_read(tmp_path: Path, *, terminal: bool, fmt: str | None = None) -> str:
    if terminal:
        parent, child_end = pty.openpty()
    else:
        parent, child_end = os.pipe()
    proc = start(tmp_path, child_end, fmt)
    os.close(child_end)
    try:
        return first_line(parent)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(parent)


def test_auto_is_text_on_a_terminal(tmp_path: Path) -> None:
    line = run_and_read(tmp_path, terminal=True)
    assert not line.startswith("{"), line
    assert " INFO eventsinkd" in line


def test_auto_is_json_lines_elsewhere(tmp_path: Path) -> None:
    doc = json.loads(run_and_read(tmp_path, terminal=False))
    assert doc["level"] == "info" and doc["logger"].startswith("eventsinkd")


def test_the_config_overrides_the_terminal(tmp_path: Path) -> None:
    doc = json.loads(run_and_read(tmp_path, terminal=True, fmt="json"))
    assert doc["level"] == "info"
    line = run_and_read(tmp_path / "text", terminal=False, fmt="text")
    assert " INFO eventsinkd" in line
