"""deploy/kubernetes/eventsinkd-sidecar.yaml: the example Pod's ports, paths, probes, volumes
and secret agree with the eventsinkd config it carries, and that config is one eventsinkd
accepts (and refuses while the secret is still the placeholder)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.config.model import Config

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "eventsinkd-sidecar.yaml"
SECRET_VALUE = "whsec_" + base64.b64encode(b"k" * 32).decode()


def docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


def containers() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in docs()["Pod"]["spec"]["containers"]}


def carried_config(monkeypatch: pytest.MonkeyPatch, secret: str = SECRET_VALUE) -> Config:
    monkeypatch.setenv("CRM_WEBHOOK_SECRET", secret)
    return parse_config(docs()["ConfigMap"]["data"]["config.yaml"], Path("config.yaml"))


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def test_the_config_is_valid_and_its_paths_are_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = carried_config(monkeypatch)
    sidecar, nexus = containers()["eventsinkd"], containers()["nexus"]
    # The config file: where the args say, from the ConfigMap.
    args = sidecar["args"]
    config_path = Path(args[args.index("-c") + 1])
    cm_mount = mounts(sidecar)[str(config_path.parent)]
    volumes = {v["name"]: v for v in docs()["Pod"]["spec"]["volumes"]}
    assert volumes[cm_mount["name"]]["configMap"]["name"] == docs()["ConfigMap"]["metadata"]["name"]
    assert config_path.name in docs()["ConfigMap"]["data"]
    # The WAL: Nexus's volume, read-only here, at wal.dir.
    wal = mounts(sidecar)[str(cfg.wal.dir)]
    assert wal["readOnly"] is True
    assert wal["name"] in {m["name"] for m in nexus["volumeMounts"]}
    assert not any(m.get("readOnly") for m in nexus["volumeMounts"] if m["name"] == wal["name"])
    # The state: writable, on a volume of its own.
    state = mounts(sidecar)[str(cfg.state_dir)]
    assert not state.get("readOnly") and state["name"] != wal["name"]


def test_ports_probes_and_scrape_annotations_match_admin_listen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = carried_config(monkeypatch)
    sidecar = containers()["eventsinkd"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert cfg.admin.host == "0.0.0.0"  # reachable on the pod's IP by the kubelet and Prometheus
    assert ports["admin"] == cfg.admin.port
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    notes = docs()["Pod"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == cfg.admin.port
    assert notes["prometheus.io/path"] == "/metrics"


def test_the_webhook_secret_comes_from_the_secret_through_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = carried_config(monkeypatch)
    env = {e["name"]: e for e in containers()["eventsinkd"]["env"]}
    ref = env["CRM_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
    secret = docs()["Secret"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    sink = cfg.events.sinks[0]
    assert sink.secrets == ["env:CRM_WEBHOOK_SECRET"]  # type: ignore[union-attr]
    # Applied as shipped, the placeholder is refused at start: no sink signs with it.
    with pytest.raises(ConfigError, match="whsec_"):
        carried_config(monkeypatch, secret["stringData"][ref["key"]])


def test_non_root_with_a_read_only_root_filesystem() -> None:
    pod = docs()["Pod"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    ctx = containers()["eventsinkd"]["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
