"""The image, built and run for real with podman (tests/support/container_harness.py): a WAL mounted
read-only and a config mounted in; every event arrives signed, the health check follows
admin.listen to a non-default port, /wal cannot be written, and podman stop drains and
gives exit 0. Needs root (rootful podman), as .ci/run runs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from container_harness import IMAGE, Podman
from daemon_harness import SECRET, expected_ids
from standardwebhooks.webhooks import Webhook

from eventsinkd.common.ports import free_port
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

UID = 10001  # the image's default user (Dockerfile ARG UID)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the container test needs root (rootful podman); .ci/run runs as root")
        pytest.skip("the container test needs root (rootful podman)")
    p = Podman(tmp_path_factory.mktemp("podman"))
    p.ensure_base()
    p.build()
    yield p


async def test_the_image_delivers_from_a_read_only_wal(
    podman: Podman, receiver: WebhookServer, tmp_path: Path
) -> None:
    wal, state = tmp_path / "wal", tmp_path / "state"
    state.mkdir()
    writer = NexusWriter(wal, precreate=False)
    writer.append(25)
    admin_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "wal": {"dir": "/wal", "start_at": "beginning"},
                "state_dir": "/var/lib/eventsinkd",
                "events": {
                    "overflow": "block",
                    "sinks": [{"name": "r", "url": receiver.url, "secrets": ["env:SECRET"]}],
                },
                "admin": {"listen": f"127.0.0.1:{admin_port}"},  # not the default 9464
            }
        )
    )
    for path in (wal, state, *wal.iterdir(), *state.iterdir()):
        os.chown(path, UID, UID)  # the image runs as Nexus's UID; here, its default
    name = f"eventsinkd-test-{admin_port}"
    podman.run(
        *("run", "-d", "--name", name, "--network", "host", "--env", f"SECRET={SECRET}"),
        *("-v", f"{wal}:/wal:ro", "-v", f"{config}:/etc/eventsinkd/config.yaml:ro"),
        *("-v", f"{state}:/var/lib/eventsinkd", IMAGE),
    )
    try:
        await receiver.wait_for(25, timeout_s=120)
        for r in receiver.requests:
            Webhook(SECRET).verify(r.body, r.headers)  # raises on a bad signature
        assert set(receiver.ids) == expected_ids(writer)

        health = await asyncio.to_thread(podman.run, "healthcheck", "run", name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr

        write = await asyncio.to_thread(
            podman.run, "exec", name, "sh", "-c", "echo x > /wal/intruder", check=False
        )
        assert write.returncode != 0 and "Read-only file system" in write.stderr
        assert not (wal / "intruder").exists()

        await asyncio.to_thread(podman.run, "stop", "-t", "30", name)
        code = await asyncio.to_thread(
            podman.run, "inspect", name, "--format", "{{.State.ExitCode}}"
        )
        assert code.stdout.strip() == "0", (
            await asyncio.to_thread(podman.run, "logs", name)
        ).stderr
    finally:
        await asyncio.to_thread(podman.run, "rm", "-f", name, check=False)
