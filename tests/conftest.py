from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import Record, StartAt

FIXTURES = Path(__file__).parent / "fixtures" / "nexus-wal"
FIXTURE_SETS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def fixture_mac_key(name: str) -> bytes | None:
    key = FIXTURES / name / "mac.key"
    return key.read_bytes().strip() if key.exists() else None


def run_cli(
    *args: str | Path, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m eventsinkd`` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "eventsinkd", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


async def collect(
    wal_dir: Path,
    *,
    start: Position | StartAt = "beginning",
    follow: bool = False,
    until: Callable[[list[Record]], bool] | None = None,
    timeout_s: float = 60,
    mac_key: bytes | None = None,
    **kw: object,
) -> list[Record]:
    """Read records with a real WalFollower until the end (no follow) or ``until`` says so."""
    follower = WalFollower(
        wal_dir,
        LineParser(mac_key),
        start,
        follow=follow,
        poll_interval_s=0.05,
        **kw,  # type: ignore[arg-type]
    )
    got: list[Record] = []

    async def run() -> None:
        async for batch in follower:
            got.extend(batch.records)
            if until is not None and until(got):
                follower.stop()

    await asyncio.wait_for(run(), timeout_s)
    return got


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    d = tmp_path / "wal"
    d.mkdir(mode=0o700)
    return d


def is_root() -> bool:
    return os.geteuid() == 0
