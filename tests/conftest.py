from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path

import pytest
from daemon_harness import Daemon, daemons, webhook_receiver

from eventsinkd.devtools.peers.process import MissingProgram
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.wal.batches import Record
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import StartAt

# HTTP sinks honour HTTPS_PROXY / HTTP_PROXY as curl does, loopback included: a proxy in the
# environment of whoever runs the tests would carry every test's requests to its 127.0.0.1
# receivers. The tests about proxies set these variables themselves.
for _name in list(os.environ):
    if _name.lower() in ("https_proxy", "http_proxy", "all_proxy", "no_proxy"):
        del os.environ[_name]

FIXTURES = Path(__file__).parent / "fixtures" / "nexus-wal"
FIXTURE_SETS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def fixture_mac_key(name: str) -> bytes | None:
    key = FIXTURES / name / "mac.key"
    return key.read_bytes().strip() if key.exists() else None


def mac_key_args(name: str) -> list[str]:
    """The command-line arguments that give a fixture set's MAC key (none without one)."""
    key = FIXTURES / name / "mac.key"
    return ["--mac-key", f"file:{key}"] if key.exists() else []


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


@pytest.fixture
async def new_daemon(tmp_path: Path) -> AsyncIterator[Callable[..., Daemon]]:
    """Makes `eventsinkd run` subprocesses in ``tmp_path``; none outlives the test."""
    async with daemons(tmp_path) as make:
        yield make


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookServer]:
    """A webhook receiver on 127.0.0.1 (eventsinkd/devtools/peers/webhook.py)."""
    async with webhook_receiver() as srv:
        yield srv


def need_tool(name: str, package: str) -> str:
    """The path of command ``name``. Missing: on CI a failure (.ci/run installs Debian's
    ``package``), elsewhere a skip that says what to install."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is missing (Debian package {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: .ci/run should have installed it")
        pytest.skip(f"{why}; .ci/run installs it on CI")
    return path


def self_signed(root: Path, name: str = "peer") -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1 and its key, made by the openssl command."""
    openssl = need_tool("openssl", "openssl")
    cert, key = root / f"{name}.crt", root / f"{name}.key"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except MissingProgram as exc:
        _missing_program(exc)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except MissingProgram as exc:
        _missing_program(exc)


def _missing_program(exc: MissingProgram) -> None:
    """A peer's server program (nats-server, rsyslogd: eventsinkd/devtools/peers) is not
    installed: on CI a failure, elsewhere a skip, as :func:`need_tool` does."""
    if os.environ.get("CI"):
        pytest.fail(f"{exc}: CI should have it")
    pytest.skip(f"{exc}; CI has it")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One self-signed certificate for 127.0.0.1 and its key, for every TLS test."""
    return self_signed(tmp_path_factory.mktemp("tls"))


# Timestamps a Go-time fast path must hand to the exact parser (or get exactly right).
ODD_GO_TIMESTAMPS = (
    "2026-04-10T12:34:56.1234567890Z",  # 10 digits: not RFC 3339 as Go writes it
    "2026-04-10T12:34:56.Z",
    "2026-04-10T12:34:56.12\u0663Z",  # a non-ASCII digit
    "2026-04-10T12:34:56.5z",
    "2026-04-10T12:34:56.5+00:00",
    "2026-04-10T12:34:56.5-01:30",
    "2026-04-10T12:34:56",
    "2026-04-10T12:34:56.5Z ",
)
