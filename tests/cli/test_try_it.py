"""docs/try-it.md, run as written: the code block is read from the doc and its lines are fed
to one bash, one at a time, as a person types them.

What the test changes: the ports 8080 and 9464 become free ones (the machine's may be
taken). Between lines it waits for each to finish, and before the last (`kill`) for the
receiver to have printed every event, as a person would look before stopping it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from eventsinkd.common.ports import free_port

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "try-it.md"
EVENTS = 20  # what sample-wal writes by default, as the doc says


def doc_lines() -> list[str]:
    found = re.search(r"<!-- test: try-it\b.*?-->\n```sh\n(.*?)```", DOC.read_text(), re.S)
    assert found is not None, "docs/try-it.md has no block marked test: try-it"
    lines = [line for line in found.group(1).splitlines() if line.strip()]
    assert len(lines) <= 10
    return lines


class Shell:
    """One bash reading commands from a pipe; everything it prints is collected."""

    def __init__(self, cwd: Path) -> None:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.proc = subprocess.Popen(
            ["bash"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.out = ""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.out += line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def text(self) -> str:
        with self._lock:
            return self.out

    def until(self, cond: object, what: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond(self.text()):  # type: ignore[operator]
            assert time.monotonic() < deadline, f"waited for {what}:\n{self.text()}"
            time.sleep(0.1)

    def type(self, line: str, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\necho __done_{n}__ $?\n")
        self.proc.stdin.flush()
        self.until(lambda out: f"__done_{n}__" in out, f"line {n}: {line}")


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    receiver_port, admin_port = free_port(), free_port()
    lines = [
        line.replace("8080", str(receiver_port)).replace("9464", str(admin_port))
        for line in doc_lines()
    ]
    shell = Shell(tmp_path)
    try:
        for n, line in enumerate(lines[:-1]):
            shell.type(line, n)
            assert f"__done_{n}__ 0" in shell.text(), shell.text()
        events = lambda out: len(re.findall(r"^memory_written \S+ source=", out, re.M))  # noqa: E731
        shell.until(lambda out: events(out) >= EVENTS, f"{EVENTS} events at the receiver")
        shell.type(lines[-1], len(lines) - 1)
        assert shell.proc.stdin is not None
        shell.proc.stdin.write("wait\nexit\n")
        shell.proc.stdin.close()
        assert shell.proc.wait(timeout=60) == 0
    finally:
        shell.close()
    out = shell.text()
    secret = (tmp_path / "whsec.txt").read_text().strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret), secret
    assert secret not in out
    assert (tmp_path / "try" / "config.yaml").exists()
    assert f"listening on http://127.0.0.1:{receiver_port}/ (verifying signatures)" in out
    # status: the daemon answered, with its one sink.
    assert f"try (webhook http://127.0.0.1:{receiver_port}/hook)" in out, out
    # tail: two event bodies, and `head` closing the pipe is no error.
    assert len(re.findall(r'^\{"event_type":"memory_written"', out, re.M)) == 2, out
    assert "Broken pipe" not in out and "Traceback" not in out, out
    # The receiver, stopped: every event, verified, once.
    assert f"received {EVENTS} event(s), 0 repeated, 0 bad signature(s)" in out, out
    assert "REJECTED" not in out
