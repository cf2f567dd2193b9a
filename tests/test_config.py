"""Config validation: every refusal names the key path and line, secrets never printed."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import run_cli
from pydantic import BaseModel

from eventsinkd.config import Config
from eventsinkd.configfile import ConfigError, parse_config

ROOT = Path(__file__).parent.parent
GOOD_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def refusal(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("c.yaml"))
    return info.value.problems


def test_example_config_validates_and_documents_every_key(tmp_path: Path) -> None:
    text = (ROOT / "config.example.yaml").read_text()
    cfg = parse_config(text, Path("config.example.yaml"))
    assert cfg.events.sinks[0].name == "example"
    doc = yaml.safe_load(text)

    def walk(model: type[BaseModel], node: dict[str, Any], path: str) -> None:
        for name, field in model.model_fields.items():
            assert name in node, f"config.example.yaml does not document {path}{name}"
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(sub, node[name], f"{path}{name}.")

    walk(Config, doc, "")
    from eventsinkd.config import SinkConfig

    walk(SinkConfig, doc["events"]["sinks"][0], "events.sinks[0].")
    # Defaults in the example are the model's defaults.
    defaults = Config.model_validate({"wal": {"dir": "/var/lib/nexus/wal"}})
    assert cfg.model_dump(exclude={"events"}) == defaults.model_dump(exclude={"events"})
    assert cfg.events.model_dump(exclude={"sinks"}) == defaults.events.model_dump(exclude={"sinks"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wal: {dir: /w}\nbogus: 1\n", "bogus (line 2): unknown key"),
        ("wal: {}\n", "wal.dir (line 1): required key is missing"),
        ("state_dir: /s\n", "wal: required key is missing"),
        ("wal: {dir: /w, poll_interval_s: fast}\n", "wal.poll_interval_s (line 1): Input should"),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - {name: a, url: 'http://x/'}\n"
            "    - {name: a, url: 'http://y/'}\n",
            "events (line 3): duplicate sink name 'a'",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "    - name: b\n      url: not a url\n",
            "events.sinks[1].url (line 7): Input should be a valid URL",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: ftp://x/\n",
            "events.sinks[0].url (line 5): URL scheme should be 'http' or 'https'",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "      secrets: [env:EVENTSINKD_TEST_UNSET_VAR]\n",
            "events.sinks[0].secrets[0] (line 6): environment variable "
            "EVENTSINKD_TEST_UNSET_VAR is not set",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "      secret: file:/nonexistent/secret\n",
            "events.sinks[0].secrets[0] (line 4): cannot read /nonexistent/secret",
        ),
        (
            "wal: {dir: /w, mac_key: 'env:EVENTSINKD_TEST_UNSET_VAR'}\n",
            "wal.mac_key (line 1): environment variable EVENTSINKD_TEST_UNSET_VAR is not set",
        ),
        ("wal: {dir: /w}\nstate_dir: /w/state\n", "state_dir (line 2): must not be inside wal.dir"),
        (
            "wal: {dir: /w}\nevents: {overflow: sometimes}\n",
            "events.overflow (line 2): Input should be 'drop' or 'block'",
        ),
        ("wal: {dir: /w}\nadmin: {listen: 9464}\n", "admin.listen (line 2): Input should be"),
        ("wal: {dir: /w}\nwal: {dir: /x}\n", "wal (line 2): duplicate key"),
        ("wal: [unclosed\n", "not valid YAML"),
        ("", "the file is empty"),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "      headers: {Webhook-Signature: forged}\n",
            "events.sinks[0].headers (line 6): header(s) Webhook-Signature are set by eventsinkd",
        ),
    ],
)
def test_refusals_name_the_key_and_line(text: str, expected: str) -> None:
    problems = refusal(text)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = refusal("wal: {dir: /w, start_at: middle}\nadmin: {listen: x}\nlog: {level: loud}\n")
    assert len(problems) == 3


def test_secrets_are_never_printed() -> None:
    bad = "whsec_c2VjcmV0"  # decodes, but to too few bytes
    problems = refusal(
        f"wal: {{dir: /w}}\nevents:\n  sinks:\n    - {{name: a, url: 'http://x/', secret: {bad}}}\n"
    )
    assert problems and not any("c2VjcmV0" in p for p in problems)
    assert any("at least 16 bytes" in p for p in problems)


def test_check_config_good_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    (tmp_path / "wal").mkdir()
    good.write_text(
        f"wal: {{dir: {tmp_path / 'wal'}}}\nstate_dir: {tmp_path / 's'}\n"
        "events:\n  sinks:\n"
        f"    - {{name: hook, url: 'https://h.example/x', secret: {GOOD_SECRET}}}\n"
    )
    res = run_cli("check-config", "-c", good)
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout and "readable" in res.stdout
    assert "sink hook: https://h.example/x" in res.stdout and "signed (1 secret(s))" in res.stdout
    assert GOOD_SECRET not in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("wal: {dir: /w}\nevents:\n  sinks:\n    - {name: a, url: nope, colour: red}\n")
    res = run_cli("check-config", "-c", bad)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert f"{bad}: events.sinks[0].url (line 4): Input should be a valid URL" in lines[0]
    assert f"{bad}: events.sinks[0].colour (line 4): unknown key" in lines[1]
    res = run_cli("check-config", "-c", tmp_path / "missing.yaml")
    assert res.returncode == 2 and "cannot read" in res.stderr
