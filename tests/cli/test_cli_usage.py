"""The command line as a person meets it: `secret` and `sample-wal`, a closed pipe (`| head`)
ending a command quietly with the usual status, and `--help` describing every command and
option with its default. Real subprocesses, real files, a real pipe.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
from pathlib import Path

import yaml
from daemon_harness import run_cli

from eventsinkd.cli import common
from eventsinkd.cli.main import EXIT_BROKEN_PIPE, build_parser
from eventsinkd.devtools.child import command
from eventsinkd.state.deadletters import DeadLetter, DeadLetterStore


def write(path: Path, cfg: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- secret and sample-wal ---------------------------------------------------------------


def test_secret_prints_a_new_standard_webhooks_secret() -> None:
    first, second = (run_cli("secret").stdout.strip() for _ in range(2))
    assert first != second
    for s in (first, second):
        assert s.startswith("whsec_")
        assert len(base64.b64decode(s.removeprefix("whsec_"), validate=True)) == 32


def test_sample_wal_refuses_a_directory_in_use_and_a_bad_secret(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    res = run_cli("sample-wal", tmp_path / "used")
    assert res.returncode == 2 and "is not empty: give a new directory" in res.stderr
    res = run_cli("sample-wal", tmp_path / "new", "--secret", "hunter2")
    assert res.returncode == 2
    assert "must start with whsec_" in res.stderr and "`eventsinkd secret` makes one" in res.stderr


# -- a closed pipe -----------------------------------------------------------------------


def dead_letter_config(tmp_path: Path, n: int) -> Path:
    store = DeadLetterStore(tmp_path / "state")
    store.add(
        [
            DeadLetter(
                "s",
                f"memory_written:{i:032x}",
                "memory_written",
                "t",
                b"{}",
                4,
                1.0,
                2.0,
                "HTTP 422",
            )
            for i in range(n)
        ]
    )
    store.close()
    return write(
        tmp_path / "c.yaml",
        {
            "wal": {"dir": str(tmp_path / "wal")},
            "state_dir": str(tmp_path / "state"),
            "events": {"sinks": [{"name": "s", "url": "http://127.0.0.1:9/"}]},
        },
    )


def test_a_closed_pipe_ends_a_command_quietly(tmp_path: Path) -> None:
    cfg = dead_letter_config(tmp_path, 3000)  # more than a pipe holds
    # The reader is gone before anything is written: every write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run(
            command("dead-letters", "list", "-c", cfg),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert res.returncode == EXIT_BROKEN_PIPE == 141
    assert res.stderr == ""
    # As a person types it: no message, and the pipeline's status is head's.
    pipeline = " ".join(map(str, command("dead-letters", "list", "-c", cfg))) + " | head -1"
    res = subprocess.run(
        ["bash", "-c", pipeline + "; echo status ${PIPESTATUS[*]}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.stderr == ""
    assert re.fullmatch(r"s\tmemory_written:0{32}\t.*\nstatus (141|0) 0\n", res.stdout), res.stdout


# -- --help ------------------------------------------------------------------------------


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out = []

    def walk(name: str, p: argparse.ArgumentParser) -> None:
        out.append((name, p))
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}", sub)

    walk("eventsinkd", build_parser())
    return out


def test_every_command_and_option_has_help_and_its_default() -> None:
    found = parsers()
    assert len(found) > 12
    for name, p in found:
        assert p.description, f"{name} has no description"
        formatter = common.HelpFormatter(name)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if isinstance(action, argparse._VersionAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            shown = action.default not in (None, False, [])
            if shown and "default" not in (action.help or ""):
                assert "(default: " in (formatter._get_help_string(action) or ""), (
                    name,
                    action.dest,
                )
    tail = " ".join(dict(found)["eventsinkd tail"].format_help().split())
    assert "(default: end)" in tail and "(default: 0.5)" in tail and "(default: --follow)" in tail
    receive = " ".join(dict(found)["eventsinkd receive"].format_help().split())
    assert "(default: 127.0.0.1)" in receive and "(default: 8080)" in receive


def test_help_runs_for_every_command() -> None:
    for name, _ in parsers():
        res = run_cli(*name.split()[1:], "--help")
        assert res.returncode == 0 and "usage: eventsinkd" in res.stdout, (name, res.stderr)


# -- shell completion --------------------------------------------------------------------


def complete(script: Path, cwd: Path, *words: str) -> list[str]:
    """What bash's completion offers for the command line ``words`` (the last being typed),
    by the script that `eventsinkd completion bash` printed, run in a real bash."""
    quoted = " ".join(f"'{w}'" for w in words)
    res = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
            f'COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}; '
            '_shtab_eventsinkd; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return res.stdout.split()


def test_bash_completion_offers_commands_options_values_and_files(tmp_path: Path) -> None:
    res = run_cli("completion", "bash")
    assert res.returncode == 0, res.stderr
    script = tmp_path / "eventsinkd.bash"
    script.write_text(res.stdout)
    (tmp_path / "config.yaml").write_text("wal: {dir: /w}\n")
    (tmp_path / "wal").mkdir()
    assert complete(script, tmp_path, "eventsinkd", "ch") == ["check-config"]
    assert set(complete(script, tmp_path, "eventsinkd", "s")) == {
        "secret",
        "sample-wal",
        "status",
    }
    assert complete(script, tmp_path, "eventsinkd", "tail", "--fr") == ["--from"]
    assert complete(script, tmp_path, "eventsinkd", "tail", "--from", "") == ["beginning", "end"]
    assert complete(script, tmp_path, "eventsinkd", "run", "-c", "con") == ["config.yaml"]
    assert "wal" in complete(script, tmp_path, "eventsinkd", "verify", "w")
    for shell in ("zsh", "tcsh"):
        res = run_cli("completion", shell)
        assert res.returncode == 0 and "eventsinkd" in res.stdout
