"""The container image for real: podman with runc, a base image made locally, the image built.

This machine has no registry and no systemd, so (as the Dockerfile's comment allows) the
base image is made here: ``debootstrap`` a minimal Debian with python3 and venv from the
mirror apt uses, a venv at /opt/venv, ``podman import``. It is kept in podman's store and
made only when missing (about 50 s; the image build on top of it about 20 s). podman runs
with a containers.conf of its own (runc, cgroupfs, file events, fixed ulimits): the
defaults cannot run on this host. The image is built by ``make image`` (``--format
docker``, which keeps HEALTHCHECK), with the host's CA bundle, so pip inside the build
trusts what the host trusts.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from conftest import need_tool

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-python:bookworm"
IMAGE = "localhost/eventsinkd:test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def debian_mirror() -> str:
    """The mirror apt uses (deb822 sources or sources.list), else Debian's own."""
    for path in [*Path("/etc/apt/sources.list.d").glob("*.sources"), Path("/etc/apt/sources.list")]:
        try:
            text = path.read_text()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M
        )
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


class Podman:
    def __init__(self, conf_dir: Path) -> None:
        self.binary = need_tool("podman", "podman")
        for tool, package in (("runc", "runc"), ("buildah", "buildah")):
            need_tool(tool, package)
        conf = conf_dir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 300, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,  # type: ignore[arg-type]
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
        return proc

    def ensure_base(self) -> None:
        if self.run("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return
        debootstrap = need_tool("debootstrap", "debootstrap")
        with tempfile.TemporaryDirectory(prefix="eventsinkd-rootfs-") as rootfs:
            subprocess.run(
                [
                    *(debootstrap, "--variant=minbase"),
                    "--include=python3,python3-venv,ca-certificates",
                    *("bookworm", rootfs, debian_mirror()),
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
            subprocess.run(
                ["chroot", rootfs, "python3", "-m", "venv", "/opt/venv"], check=True, timeout=120
            )
            path = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            with subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE) as tar:
                self.run(
                    "import", "--change", f"ENV PATH={path}", "-", BASE_IMAGE, stdin=tar.stdout
                )
            assert tar.returncode == 0

    def build(self) -> None:
        """``make image``, as a user builds it (podman comes first there)."""
        flags = f"-v {CA_BUNDLE}:{CA_BUNDLE}:ro --env PIP_CERT={CA_BUNDLE}"
        proc = subprocess.run(
            ["make", "image", f"IMAGE={IMAGE}", f"BASE_IMAGE={BASE_IMAGE}", f"BUILD_FLAGS={flags}"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, f"make image: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "podman build --format docker" in proc.stderr  # set -x: the command it ran
