"""Config validation: every refusal names the key path and line, secrets never printed."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import run_cli
from pydantic import BaseModel

from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.config.model import Config, EventsConfig

ROOT = Path(__file__).resolve().parents[2]
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
    from eventsinkd.config.sinks import WebhookSinkConfig

    walk(WebhookSinkConfig, doc["events"]["sinks"][0], "events.sinks[0].")
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
        (
            "wal: {dir: /w, poll_interval_s: fast}\n",
            "wal.poll_interval_s (line 1): must be a number",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - {name: a, url: 'http://x/'}\n"
            "    - {name: a, url: 'http://y/'}\n",
            "events (line 3): duplicate sink name 'a'",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "    - name: b\n      url: not a url\n",
            "events.sinks[1].url (line 7): has no scheme",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: ftp://x/\n",
            "events.sinks[0].url (line 5): must start with https:// or http://",
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
            "events.overflow (line 2): must be 'drop' or 'block'",
        ),
        ("wal: {dir: /w}\nadmin: {listen: 9464}\n", "admin.listen (line 2): must be"),
        ("wal: {dir: /w}\nwal: {dir: /x}\n", "wal (line 2): duplicate key"),
        ("wal: [unclosed\n", "not valid YAML"),
        ("", "the file is empty"),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "      headers: {Webhook-Signature: forged}\n",
            "events.sinks[0].headers (line 6): header(s) Webhook-Signature are set by eventsinkd",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "      headers: {Content-Length: '9'}\n",
            "events.sinks[0].headers (line 6): header(s) Content-Length are set by eventsinkd",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            '      headers: {X-Team: "a\\r\\nX-Evil: 1"}\n',
            "events.sinks[0].headers (line 6): header X-Team: a value cannot hold a line break",
        ),
        (
            "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n      url: http://x/\n"
            "      headers: {'X Team': a}\n",
            "events.sinks[0].headers (line 6): 'X Team' is not a header name",
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
    assert "sink hook: webhook https://h.example/x" in res.stdout
    assert "signed (1 secret(s))" in res.stdout
    assert GOOD_SECRET not in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("wal: {dir: /w}\nevents:\n  sinks:\n    - {name: a, url: nope, colour: red}\n")
    res = run_cli("check-config", "-c", bad)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert f"{bad}: events.sinks[0].url (line 4): has no scheme" in lines[0]
    assert f"{bad}: events.sinks[0].colour (line 4): unknown key" in lines[1]
    res = run_cli("check-config", "-c", tmp_path / "missing.yaml")
    assert res.returncode == 2 and "cannot read" in res.stderr


def _sink(body: str) -> str:
    return "wal: {dir: /w}\nevents:\n  sinks:\n    - name: a\n" + body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("      type: carrier-pigeon\n", "events.sinks[0].type (line 5): unknown sink type; use"),
        ("      type: syslog\n", "events.sinks[0].url (line 4): required key is missing"),
        (
            "      type: syslog\n      url: http://h:514\n",
            "events.sinks[0].url (line 6): the scheme must be one of syslog://, syslog+tcp://",
        ),
        (
            "      type: syslog\n      url: syslog+tcp://h:99999\n",
            "events.sinks[0].url (line 6): Port out of range",
        ),
        (
            "      type: syslog\n      url: syslog://h\n      facility: local9\n",
            "events.sinks[0].facility (line 7): unknown facility",
        ),
        (
            "      type: syslog\n      url: syslog://h\n      tag: two words\n",
            "events.sinks[0].tag (line 7): RFC 5424 APP-NAME",
        ),
        (
            "      type: syslog\n      url: syslog://h\n      secrets: [x]\n",
            "events.sinks[0].secrets (line 7): unknown key",
        ),
        (
            "      type: otlp\n      url: http://c:4318\n      encoding: xml\n",
            "events.sinks[0].encoding (line 7): must be 'json' or 'protobuf'",
        ),
        (
            "      type: otlp\n      url: http://c:4318\n      headers: {content-type: x}\n",
            "events.sinks[0].headers (line 7): Content-Type and User-Agent are set by",
        ),
        (
            "      type: fluentd\n      url: fluentd://h\n      max_batch: 0\n",
            "events.sinks[0].max_batch (line 7): must be greater than or equal to 1",
        ),
        (
            "      type: nats\n      url: [nats://a:4222, http://b]\n",
            "events.sinks[0].url (line 6): the scheme must be one of nats://, tls://",
        ),
        (
            "      type: nats\n      url: nats://a\n      subject: 'x.{payload}'\n",
            "events.sinks[0].subject (line 7): unknown field(s) payload",
        ),
        (
            "      type: nats\n      url: nats://a\n      subject: 'x..y'\n",
            "events.sinks[0].subject (line 7): not a valid NATS subject",
        ),
        (
            '      type: nats\n      url: nats://a\n      subject: "x.a\\rb"\n',
            "events.sinks[0].subject (line 7): not a valid NATS subject",
        ),
        (
            "      type: nats\n      url: nats://a\n      token: t\n      user: u\n"
            "      password: p\n",
            "events.sinks[0] (line 4): give one of creds_file, token or user/password, "
            "not token and user",
        ),
        (
            "      type: nats\n      url: nats://a\n      token: env:EVENTSINKD_TEST_UNSET_VAR\n",
            "events.sinks[0].token (line 7): environment variable EVENTSINKD_TEST_UNSET_VAR",
        ),
    ],
)
def test_sink_types_are_checked_with_the_key_and_line(body: str, expected: str) -> None:
    problems = refusal(_sink(body))
    assert any(expected in p for p in problems), problems


def test_a_sink_without_type_is_a_webhook_and_each_type_gets_its_own_settings() -> None:
    cfg = parse_config(
        _sink("      url: http://x/\n")
        + "    - {name: s, type: syslog, url: 'syslog+tls://h'}\n"
        + "    - {name: o, type: otlp, url: 'http://c:4318/'}\n"
        + "    - {name: f, type: fluentd, url: 'fluentd://h'}\n"
        + "    - {name: n, type: nats, url: 'nats://a:1', token: sekrit}\n",
        Path("c.yaml"),
    )
    webhook, syslog, otlp, fluentd, nats = cfg.events.sinks
    assert (webhook.type, webhook.batch_size) == ("webhook", 1)
    assert syslog.type == "syslog" and syslog.endpoint == ("syslog+tls", "h", 6514)
    assert otlp.type == "otlp" and otlp.logs_url == "http://c:4318/v1/logs"
    assert fluentd.type == "fluentd" and fluentd.endpoint.port == 24224
    assert nats.type == "nats" and nats.url == ["nats://a:1"] and nats.batch_size == 200
    assert "sekrit" not in repr(nats)


def test_check_config_shows_each_type_and_never_a_secret(tmp_path: Path) -> None:
    (tmp_path / "wal").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text(
        f"wal: {{dir: {tmp_path / 'wal'}}}\nstate_dir: {tmp_path / 's'}\n"
        "events:\n  sinks:\n"
        "    - {name: n, type: nats, url: 'nats://a:1', user: u, password: hunter2}\n"
        "    - {name: o, type: otlp, url: 'http://c:4318', headers: {authorization: tok3n}}\n"
    )
    res = run_cli("check-config", "-c", path)
    assert res.returncode == 0, res.stderr
    assert "sink n: nats nats://a:1" in res.stdout and "sink o: otlp http://c:4318" in res.stdout
    assert "hunter2" not in res.stdout + res.stderr and "tok3n" not in res.stdout + res.stderr


def test_syslog_messages_over_a_datagram_are_refused_for_udp_only() -> None:
    big = "      type: syslog\n      url: {}\n      max_message_bytes: 100000\n"
    problems = refusal(_sink(big.format("syslog://h")))
    assert any("over 65507, the most a UDP datagram holds" in p for p in problems), problems
    cfg = parse_config(_sink(big.format("syslog+tcp://h")), Path("c.yaml"))
    assert cfg.events.sinks[0].max_message_bytes == 100_000


def test_the_example_configs_of_the_other_types_validate() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    commented = [
        yaml.safe_load(line.strip().removeprefix("#").strip())[0]
        for line in text.splitlines()
        if line.strip().startswith("# - {name:")
    ]
    events = EventsConfig.model_validate({"sinks": commented})
    assert sorted(s.type for s in events.sinks) == ["fluentd", "nats", "otlp", "syslog"]


def _delivery(keys: str) -> str:
    return f"wal: {{dir: /w}}\nevents:\n  sinks:\n    - {{name: a, url: 'http://x/', {keys}}}\n"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("concurrency: fast", "concurrency (line 4): use auto, or a number of requests"),
        ("concurrency: 0", "concurrency (line 4): use auto, or a number of requests"),
        ("concurrency: 2000", "from 1 to 1024"),
        ("max_concurrency: 0", "max_concurrency (line 4): must be greater than"),
        (
            "concurrency: 16, max_concurrency: 8",
            "max_concurrency 8 is below concurrency 16",
        ),
        ("concurrency: 8, order: wal", "order: wal sends one request at a time"),
        ("order: payload", "order (line 4): must be 'none', 'wal', 'subject'"),
        ("rate_limit: 0", "rate_limit (line 4): must be greater than 0"),
    ],
)
def test_delivery_settings_are_checked(keys: str, expected: str) -> None:
    problems = refusal(_delivery(keys))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("keys", "adaptive", "max_requests", "wal_order", "order_key"),
    [
        ("content: summary", True, 128, False, None),  # the defaults: auto, max 128, no order
        ("max_concurrency: 200", True, 200, False, None),
        ("concurrency: 100", False, 100, False, None),  # pinned above the default cap: fine
        ("concurrency: 1", False, 1, True, None),
        ("order: wal", False, 1, True, None),
        ("order: subject", True, 128, False, "subject"),
        ("order: destination, concurrency: 4", False, 4, False, "destination"),
        ("order: source, concurrency: 1", False, 1, True, None),  # WAL order covers it
    ],
)
def test_concurrency_and_order_settings(
    keys: str, adaptive: bool, max_requests: int, wal_order: bool, order_key: str | None
) -> None:
    sink = parse_config(_delivery(keys), Path("c.yaml")).events.sinks[0]
    assert (sink.adaptive, sink.max_requests, sink.wal_order, sink.order_key) == (
        adaptive,
        max_requests,
        wal_order,
        order_key,
    )


def test_the_keys_a_reload_does_not_apply_are_marked_once_in_the_model(tmp_path: Path) -> None:
    """The reload's warning and what it keeps both come from the fields marked RESTART."""
    base = {"wal": {"dir": str(tmp_path / "wal")}, "state_dir": str(tmp_path / "state")}
    old = Config.model_validate(base)
    new = Config.model_validate(
        {
            **base,
            "state_save_interval_s": 5,
            "admin": {"listen": "127.0.0.1:9999"},
            "events": {"overflow": "block", "max_inflight": 7, "types": ["memory_persisted"]},
            "log": {"level": "debug"},
        }
    )
    assert old.restart_only_changes(new) == [
        "state_save_interval_s",
        "admin",
        "events.types",
        "events.overflow",
    ]
    running = old.reloaded(new)
    assert running.events.overflow == "drop" and running.events.types == ["memory_written"]
    assert running.events.max_inflight == 7 and running.log.level == "debug"  # applied
    assert running.admin == old.admin and running.state_save_interval_s == 1.0
    assert old.restart_only_changes(running) == []
