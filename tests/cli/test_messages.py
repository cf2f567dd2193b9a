"""Every error a user can cause says what to do next (the command line's other manners are
in test_cli_usage.py).

The commands run as real subprocesses (`python -m eventsinkd`) on real files, except where
a test says otherwise.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from daemon_harness import Daemon, run_cli

from eventsinkd.cli import common
from eventsinkd.cli.main import main
from eventsinkd.common.ports import free_port
from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("c.yaml"))
    return info.value.problems


def write(path: Path, cfg: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- config errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "wal: {dir: /w}\nevents: {max_inflght: 10}\n",
            "events.max_inflght (line 2): unknown key; did you mean max_inflight?",
        ),
        ("wal: {dir: /w, polll_interval_s: 1}\n", "did you mean poll_interval_s?"),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - {name: a, url: 'http://x/', max_retrys: 1}\n",
            "events.sinks[0].max_retrys (line 4): unknown key; did you mean max_retries?",
        ),
        (  # a key of another sink type is suggested from the sink's own type
            "wal: {dir: /w}\nevents:\n  sinks:\n"
            "    - {name: a, type: syslog, url: 'syslog://x', facilty: local1}\n",
            "events.sinks[0].facilty (line 4): unknown key; did you mean facility?",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n"
            "    - {name: a, url: 'http://x/', auth: {type: basic, user: u, pasword: p}}\n",
            "events.sinks[0].auth.pasword (line 4): unknown key; did you mean password?",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - {name: a, url: 'http://x/', secert: s}\n",
            "did you mean secret?",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n"
            "    - {name: a, url: 'http://x/', tls: {verfy: 1}}\n",
            "events.sinks[0].tls.verfy (line 4): unknown key; did you mean verify?",
        ),
        (  # nothing close: the keys of that level
            "wal: {dir: /w}\nzebra: 1\n",
            "zebra (line 2): unknown key; the keys here are wal, state_dir, "
            "state_save_interval_s, events, dead_letters, admin, log",
        ),
    ],
)
def test_an_unknown_key_suggests_the_closest_at_its_level(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hooks.example.com/nexus", "has no scheme: write it as https://host/path"),
        ("ftp://hooks.example.com/", "must start with https:// or http://"),
        ("syslog+tcp://logs:514", "URLs go with a sink of that type: set its type"),
        ("http://hooks.example.com:99999/", "is not a valid URL (invalid port number)"),
    ],
)
def test_url_errors_in_plain_words(value: str, expected: str) -> None:
    found = problems(f"wal: {{dir: /w}}\nevents:\n  sinks:\n    - {{name: a, url: '{value}'}}\n")
    assert len(found) == 1 and expected in found[0], found
    assert "relative URL" not in found[0] and "Input should" not in found[0]
    assert value not in found[0]  # a URL may hold a secret: never echoed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wal: {dir: /w}\nevents: {max_inflight: lots}\n", "must be a whole number"),
        ("wal: {dir: /w, poll_interval_s: fast}\n", "must be a number"),
        ("wal: {dir: /w, force_polling: maybe}\n", "must be true or false"),
        ("wal: {dir: /w}\nevents: {overflow: lossless}\n", "must be 'drop' or 'block'"),
        ("wal: {dir: /w}\nevents: {sinks: {name: a}}\n", "must be a list"),
        ("wal: /w\n", "must be a mapping"),
    ],
)
def test_type_errors_in_plain_words(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found
    assert not any("Input should" in p or "unable to parse" in p for p in found), found


def test_check_config_warns_of_a_wal_dir_that_does_not_exist(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", {"wal": {"dir": str(tmp_path / "no-such-wal")}})
    res = run_cli("check-config", "-c", cfg)
    assert res.returncode == 0, res.stderr
    assert f"WARNING: wal.dir {tmp_path / 'no-such-wal'} does not exist" in res.stderr
    (tmp_path / "no-such-wal").mkdir()
    res = run_cli("check-config", "-c", cfg)
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr


# -- the default config path -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["check-config"],
        ["dead-letters", "list"],
        ["rewind", "--sink", "s", "--to", "beginning"],
        ["status"],
        ["health"],
        ["tail", "-c", "DEFAULT", "--no-follow"],
    ],
)
def test_a_missing_default_config_says_pass_c(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In-process, with the default path moved into tmp_path: a test must not depend on
    # whether this machine has /etc/eventsinkd/config.yaml.
    default = tmp_path / "etc" / "config.yaml"
    monkeypatch.setattr(common, "DEFAULT_PATH", default)
    argv = [str(default) if a == "DEFAULT" else a for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (1, 2), err
    assert "pass -c PATH" in err and str(default) in err, err


# -- asking a daemon that is not there ---------------------------------------------------


@pytest.mark.parametrize("cmd", ["status", "health"])
def test_a_refused_connection_asks_whether_the_daemon_runs(cmd: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = write(
        tmp_path / "c.yaml", {"wal": {"dir": "/w"}, "admin": {"listen": f"127.0.0.1:{port}"}}
    )
    res = run_cli(cmd, "-c", cfg)
    assert res.returncode == 1
    assert f"http://127.0.0.1:{port}/" in res.stderr
    assert "Is the daemon running? Is admin.listen right" in res.stderr, res.stderr
    assert "Errno" not in res.stderr


def test_status_wait_asks_again_until_the_daemon_answers(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d", [])
    proc = subprocess.Popen(
        ["bash", "-c", f"sleep 1.5; exec {' '.join(map(str, d.argv()))}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        res = run_cli("status", "-c", d.config, "--wait", "60")
        assert res.returncode == 0, res.stderr
        assert "ready" in res.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# -- rewind: where and when in words -----------------------------------------------------


def rewind_setup(tmp_path: Path) -> tuple[Path, NexusWriter]:
    w = NexusWriter(tmp_path / "wal")
    w.append(10)
    cfg = write(
        tmp_path / "c.yaml",
        {
            "wal": {"dir": str(tmp_path / "wal")},
            "state_dir": str(tmp_path / "state"),
            "events": {"sinks": [{"name": "s", "url": "http://127.0.0.1:9/"}]},
        },
    )
    return cfg, w


def test_rewind_says_what_to_takes(tmp_path: Path) -> None:
    cfg, _ = rewind_setup(tmp_path)
    res = run_cli("rewind", "-c", cfg, "--sink", "s", "--to", "yesterday")
    assert res.returncode == 1
    assert "no memory_written entry with that payload_id ('yesterday')" in res.stderr
    assert "--to takes beginning, an RFC 3339 time (2026-04-10T12:00:00Z" in res.stderr
    res = run_cli("rewind", "-c", cfg, "--sink", "s", "--to", "2026-04-10 12:00")
    assert res.returncode == 2
    assert "--to: " in res.stderr and "It takes beginning, an RFC 3339 time" in res.stderr


def test_rewind_tells_positions_in_words(tmp_path: Path) -> None:
    cfg, w = rewind_setup(tmp_path)
    fifth = w.expected_data()[4]
    res = run_cli("rewind", "-c", cfg, "--sink", "s", "--to", fifth.payload_id)
    assert res.returncode == 0, res.stderr
    segment = w.segments[0]
    assert (
        f"sink s: cursor moved from the end of the WAL (no saved cursor) to segment {segment} "
        "after line 4" in res.stdout
    ), res.stdout
    res = run_cli("rewind", "-c", cfg, "--sink", "s", "--to", "beginning")
    assert "to the beginning of the WAL" in res.stdout, res.stdout
    assert ":0" not in res.stdout and "None" not in res.stdout


async def test_the_stop_log_line_tells_each_cursor_in_words(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    d = new_daemon([{"name": "hook", "url": receiver.url}], overflow="block")
    w = NexusWriter(d.wal)
    w.append(3)
    await d.start()
    deadline = time.monotonic() + 60
    while len(receiver.requests) < 3:
        assert time.monotonic() < deadline, d.log_tail()
        await asyncio.sleep(0.1)
    assert await d.stop() == 0
    log = d.log.read_text()
    assert (
        f"stopped at these positions: sink hook at segment {w.segments[0]} after line 3" in log
    ), log[-2000:]
    assert " None" not in log


# -- tail and verify with -c -------------------------------------------------------------


def sample(tmp_path: Path) -> Path:
    res = run_cli("sample-wal", tmp_path / "try", "--events", "7")
    assert res.returncode == 0, res.stderr
    return tmp_path / "try" / "config.yaml"


def test_tail_and_verify_take_the_wal_and_its_key_from_the_config(tmp_path: Path) -> None:
    cfg = sample(tmp_path)
    res = run_cli("tail", "-c", cfg, "--from", "beginning", "--no-follow")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 7 and res.stderr == ""
    res = run_cli("verify", "-c", cfg)
    assert res.returncode == 0, res.stdout
    assert "rejected lines: none" in res.stdout and "not checked" not in res.stdout
    # The key is the config's: another one rejects every line.
    res = run_cli("verify", "-c", cfg, "--mac-key", "another-key")
    assert res.returncode == 1 and "rejected" in res.stdout
    res = run_cli("tail", "--no-follow")
    assert res.returncode == 2 and "give the WAL directory, or -c PATH" in res.stderr


def test_tail_that_prints_nothing_says_why(tmp_path: Path) -> None:
    cfg = sample(tmp_path)
    res = run_cli("tail", "-c", cfg, "--no-follow")
    assert res.returncode == 0 and res.stdout == ""
    assert "nothing printed: --from end (the default) starts after the last entry" in res.stderr
    empty = tmp_path / "empty-wal"
    empty.mkdir()
    res = run_cli("tail", empty, "--from", "beginning", "--no-follow")
    assert res.returncode == 0 and res.stdout == ""
    assert f"nothing printed: no memory_written event in {empty}" in res.stderr


def test_status_with_a_url_that_is_not_one(tmp_path: Path) -> None:
    res = run_cli("status", "--url", "localhost-9464")
    assert res.returncode == 1
    assert "localhost-9464/status is not a URL: give http://host:port" in res.stderr
    assert "Traceback" not in res.stderr


def test_an_admin_port_in_use_says_what_to_do(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        (tmp_path / "wal").mkdir()
        cfg = write(
            tmp_path / "c.yaml",
            {
                "wal": {"dir": str(tmp_path / "wal")},
                "state_dir": str(tmp_path / "state"),
                "admin": {"listen": f"127.0.0.1:{port}"},
                "log": {"format": "text"},
            },
        )
        res = run_cli("run", "-c", cfg)
    finally:
        taken.close()
    assert res.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port} for metrics and health (admin.listen)" in (
        res.stderr
    )
    assert "Another program (another eventsinkd?) has that port" in res.stderr, res.stderr
