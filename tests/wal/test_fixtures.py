"""Every WAL Nexus wrote (tests/fixtures/nexus-wal) comes out exactly as its answer key says."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURE_SETS, FIXTURES, mac_key_args
from daemon_harness import run_cli


@pytest.mark.parametrize("name", FIXTURE_SETS)
def test_tail_from_beginning_yields_the_answer_key(name: str) -> None:
    d = FIXTURES / name
    res = run_cli("tail", d / "wal", "--from", "beginning", "--no-follow", *mac_key_args(name))
    assert res.returncode == 0, res.stderr
    bodies = [json.loads(line) for line in res.stdout.splitlines()]
    ids = [b["payload_id"] for b in bodies]
    expected = (d / "expected_ids.txt").read_text().split()
    assert len(ids) == len(set(ids)), "a payload_id came out twice"
    assert sorted(ids) == expected
    assert all(b["event_type"] == "memory_written" and "content" not in b for b in bodies)


def test_tail_full_adds_content() -> None:
    res = run_cli(
        "tail", FIXTURES / "v012-plain" / "wal", "--from", "beginning", "--no-follow", "--full"
    )
    first = json.loads(res.stdout.splitlines()[0])
    assert list(first) == [
        "event_type",
        "payload_id",
        "source",
        "subject",
        "destination",
        "timestamp",
        "actor_type",
        "actor_id",
        "content",
    ]
    assert first["content"]["payload_id"] == first["payload_id"]


def test_tail_from_end_without_follow_prints_nothing() -> None:
    res = run_cli("tail", FIXTURES / "sentinel-plain" / "wal", "--no-follow")
    assert res.returncode == 0 and res.stdout == ""


def test_verify_reports_corrupted_lines_by_kind() -> None:
    d = FIXTURES / "corrupted"
    res = run_cli("verify", d / "wal")
    assert res.returncode == 1
    expected = json.loads((d / "expected_errors.json").read_text())
    summary = next(ln for ln in res.stdout.splitlines() if ln.startswith("rejected lines:"))
    got = dict(part.split("=") for part in summary.removeprefix("rejected lines: ").split(", "))
    assert {k: int(v) for k, v in got.items()} == expected
    assert "last line has no newline yet" in res.stdout
    assert "rejected crc: 1 (line 167)" in res.stdout


@pytest.mark.parametrize("name", [n for n in FIXTURE_SETS if n != "corrupted"])
def test_verify_clean_fixtures_exit_zero(name: str) -> None:
    res = run_cli("verify", FIXTURES / name / "wal", *mac_key_args(name))
    assert res.returncode == 0, res.stdout
    assert "rejected lines: none" in res.stdout


def test_verify_with_wrong_mac_key_rejects_every_mac_line() -> None:
    res = run_cli("verify", FIXTURES / "v012-mac" / "wal", "--mac-key", "not-the-key")
    assert res.returncode == 1
    assert "rejected lines: hmac=300" in res.stdout


def test_mac_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    key = (FIXTURES / "v012-mac" / "mac.key").read_text().strip()
    import os

    env = {**os.environ, "NEXUS_MAC": key}
    res = run_cli("verify", FIXTURES / "v012-mac" / "wal", "--mac-key", "env:NEXUS_MAC", env=env)
    assert res.returncode == 0, res.stdout
    res = run_cli("verify", FIXTURES / "v012-mac" / "wal", "--mac-key", "env:NO_SUCH_VAR_X")
    assert res.returncode == 2
    assert "environment variable NO_SUCH_VAR_X is not set" in res.stderr


def test_tail_refuses_state_dir_inside_wal(tmp_path: object) -> None:
    wal = FIXTURES / "v012-plain" / "wal"
    res = run_cli("tail", wal, "--no-follow", "--state-dir", wal / "state")
    assert res.returncode == 2
    assert "never writes into the WAL directory" in res.stderr
    assert not (wal / "state").exists()
