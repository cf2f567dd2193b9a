"""``eventsinkd sample-wal``: a WAL to try eventsinkd on by hand, and a config that uses it.

The WAL is written by the developer writer (:mod:`eventsinkd.devtools.sim.nexus_writer`)
as Nexus writes one, HMAC included; the config delivers it to ``eventsinkd receive`` on
this machine, in block mode, from the beginning.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import yaml

from eventsinkd.common.secrets import is_reference
from eventsinkd.devtools.sim.nexus_writer import run_workload


def absolute_ref(ref: str) -> str:
    """A ``file:`` reference made absolute, so that the daemon finds it from any directory."""
    if ref.startswith("file:"):
        return "file:" + str(Path(ref[5:]).expanduser().resolve())
    return ref


def write_sample(
    root: Path, *, events: int, secret: str | None, receiver_port: int, admin_port: int
) -> dict[str, Any]:
    """Write ``root/wal`` (``events`` memory writes), ``root/mac.key`` and ``root/config.yaml``;
    the config as written. ``root`` must not hold anything yet."""
    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty: give a new directory")
    root.mkdir(parents=True, exist_ok=True)
    mac_key = root / "mac.key"
    mac_key.write_text(secrets.token_hex(16) + "\n")
    mac_key.chmod(0o600)
    writer = run_workload(
        root / "wal",
        events,
        batch=10,
        rewrite_every=0,
        mac_key=mac_key.read_text().strip().encode(),
        checkpoint_every=50,
        seed=secrets.randbits(32),
    )
    written = len(writer.expected_data())
    sink: dict[str, Any] = {"name": "try", "url": f"http://127.0.0.1:{receiver_port}/hook"}
    if secret is not None:
        sink["secret"] = absolute_ref(secret) if is_reference(secret) else secret
    cfg: dict[str, Any] = {
        "wal": {
            "dir": str(root / "wal"),
            "mac_key": f"file:{mac_key}",
            "start_at": "beginning",
        },
        "state_dir": str(root / "state"),
        "events": {
            "overflow": "block",
            "retry_backoff_seconds": [1, 2, 5],
            "sinks": [sink],
        },
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "log": {"level": "info", "format": "text"},
    }
    header = (
        f"# A config to try eventsinkd with: {written} memory writes in {root / 'wal'},\n"
        f"# delivered to `eventsinkd receive --port {receiver_port}`. See docs/try-it.md.\n"
    )
    (root / "config.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return cfg
