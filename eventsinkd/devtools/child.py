"""``eventsinkd run`` as a child process: its directory, config file, command line, readiness.

The demo, the tests, the benchmarks and the soak all run the real daemon this
way; how each starts and waits for the process (asyncio or not, signals) is
theirs, what the daemon needs is here.
"""

from __future__ import annotations

import contextlib
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from eventsinkd.common.ports import free_port


def command(*args: str | Path) -> list[str]:
    """The command line of ``eventsinkd ARGS``, run by this interpreter."""
    return [sys.executable, "-m", "eventsinkd", *map(str, args)]


class DaemonDir:
    """One daemon's directory: ``wal/`` (unless given), ``state/``, ``config.yaml`` and
    ``daemon.log``, and its admin server on a free loopback port."""

    def __init__(self, root: Path, *, wal: Path | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.wal = wal if wal is not None else root / "wal"
        self.wal.mkdir(mode=0o700, exist_ok=True)
        self.state_dir = root / "state"
        self.config = root / "config.yaml"
        self.log = root / "daemon.log"
        self.admin_port = free_port()
        self.cfg: dict[str, Any] = {}

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(
        self,
        sinks: list[dict[str, Any]],
        *,
        wal: dict[str, Any] | None = None,
        events: dict[str, Any] | None = None,
        **top: Any,
    ) -> dict[str, Any]:
        """Write ``config.yaml``: this directory's WAL, state and admin port, ``sinks``, and the
        given ``wal`` and ``events`` settings and other top-level keys."""
        self.cfg = {
            "wal": {"dir": str(self.wal), **(wal or {})},
            "state_dir": str(self.state_dir),
            "events": {**(events or {}), "sinks": sinks},
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            **top,
        }
        self.config.write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        return self.cfg

    def argv(self) -> list[str]:
        return command("run", "-c", self.config)

    def ready(self, timeout_s: float = 2.0) -> bool:
        """True if the daemon's ``/readyz`` answers 200 (blocking: call it off an event loop)."""
        try:
            with urllib.request.urlopen(f"{self.admin}/readyz", timeout=timeout_s) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""
