"""Monitoring kit: deploy/prometheus/alerts.yaml (promtool checks it and runs its unit tests,
alerts_test.yaml; a real Prometheus scraping a daemon whose receiver is down sees the
sink-failing alert fire) and deploy/grafana/eventsinkd.json; every metric either names
exists in a real daemon's /metrics, so names cannot drift."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from conftest import need_tool
from daemon_harness import Daemon

from eventsinkd.common.ports import free_port
from eventsinkd.devtools.child import DaemonDir
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "eventsinkd.json"
# Series Prometheus makes itself, not the daemon.
PROMETHEUS_OWN = {"up"}


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    # Template variables: label_values(<metric>..., label)
    exprs += [v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by {, [ or a comparison, or
    the first argument of label_values."""
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[|\s*[=!<>]=?\s*\d)", expr))
    names |= set(re.findall(r"label_values\(([a-z_][a-z0-9_]*)", expr))
    return names


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    promtool = need_tool("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        capture_output=True,
        text=True,
        cwd=RULES.parent,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "alerts_test.yaml").read_text()))
    assert tested == set(rule_exprs()), "every alert has a unit test"


async def test_every_metric_the_rules_and_dashboard_name_exists(
    new_daemon: Callable[..., Daemon],
) -> None:
    d = new_daemon([{"name": "s", "url": "http://127.0.0.1:9/hook"}])
    await d.start()
    text = await d.get("/metrics")
    exposed = set(re.findall(r"^([a-z_][a-z0-9_]*)[{ ]", text, re.M))  # sample names
    for source, exprs in (
        ("alerts", list(rule_exprs().values())),
        ("dashboard", dashboard_exprs()),
    ):
        named = set().union(*map(metric_names, exprs)) - PROMETHEUS_OWN
        assert len(named) >= 6, f"{source}: the pattern found too few names: {named}"
        assert named <= exposed, f"{source}: not in /metrics: {sorted(named - exposed)}"


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    doc = json.loads(DASHBOARD.read_text())
    by_metric = " ".join(dashboard_exprs())
    for metric in (
        "bubblefish_events_delivered_total",  # throughput per sink
        "eventsinkd_delivery_attempts_total",  # failures
        "bubblefish_events_dropped_total",  # drops
        "eventsinkd_sink_lag_seconds",  # lag
        "eventsinkd_delivery_latency_seconds_bucket",  # latency histogram
        "eventsinkd_queue_depth",  # queue depth
    ):
        assert metric in by_metric, metric
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and all(p["targets"] for p in doc["panels"])
    assert all('sink=~"$sink"' in t["expr"] for p in doc["panels"][:6] for t in p["targets"])


def prometheus_config(tmp: Path, target_port: int) -> Path:
    """The rules as shipped, but each alert firing as soon as its expression holds (``for``
    is how long an operator waits, not part of what is tested here)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule.pop("for", None)
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": "eventsinkd",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def firing(api: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{api}/api/v1/alerts", timeout=5) as resp:
        doc = json.load(resp)
    return [a for a in doc["data"]["alerts"] if a["state"] == "firing"]


def test_a_real_prometheus_fires_sink_failing_for_a_dead_receiver(tmp_path: Path) -> None:
    binary = need_tool("prometheus", "prometheus")
    child = DaemonDir(tmp_path / "d")
    child.write_config(
        [{"name": "crm", "url": "http://127.0.0.1:9/hook"}],  # discard port: nothing answers
        wal={"start_at": "beginning"},
        events={"retry_backoff_seconds": [0.1], "pause_after_failures": 3},
    )
    NexusWriter(child.wal, precreate=False).append(20)
    port = free_port()
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    config = prometheus_config(prom_dir, child.admin_port)
    log = prom_dir / "log"
    with log.open("wb") as prom_log:
        daemon = subprocess.Popen(
            child.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        prom = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=prom_log,
        )
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        alerts: list[dict[str, Any]] = []
        while not any(a["labels"]["alertname"] == "EventsinkdSinkFailing" for a in alerts):
            assert time.monotonic() < deadline, (
                f"no EventsinkdSinkFailing within 60 s; firing: {alerts}\n"
                + log.read_text()[-2000:]
            )
            time.sleep(0.5)  # Prometheus evaluates the rules once a second
            try:
                alerts = firing(api)
            except OSError:
                alerts = []  # still starting
        failing = next(a for a in alerts if a["labels"]["alertname"] == "EventsinkdSinkFailing")
        assert failing["labels"]["sink"] == "crm" and failing["labels"]["job"] == "eventsinkd"
        names = {a["labels"]["alertname"] for a in alerts}
        assert "EventsinkdDown" not in names and "EventsinkdNotReady" not in names
    finally:
        for proc in (prom, daemon):
            proc.terminate()
        for proc in (prom, daemon):
            proc.wait(timeout=30)
