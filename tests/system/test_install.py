"""The install of docs/install.md, run as written in a clean directory: a wheel, then pipx
and a venv under (a stand-in for) /opt/eventsinkd, each giving a working `eventsinkd`.

The lines are read from the doc's code blocks marked ``<!-- test: NAME -->``, so the doc
and this test cannot drift. What the test changes, and why: ``sudo`` is dropped and
``/opt/eventsinkd`` is a directory under tmp_path (a test writes nothing outside it);
``sudo apt install`` lines are skipped (pipx comes from PyPI into a venv of the test's
own instead of from Debian). Needs the package index pip is configured with (the
dependencies are installed for real); takes about a minute.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import need_tool

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "install.md"
UNIT = ROOT / "systemd" / "eventsinkd.service"
SOURCE = ("pyproject.toml", "README.md", "config.example.yaml", "eventsinkd")


def doc_block(name: str) -> list[str]:
    """The command lines of the code block marked ``<!-- test: NAME ... -->``."""
    found = re.search(
        rf"<!-- test: {re.escape(name)}\b.*?-->\n```sh\n(.*?)```", DOC.read_text(), re.S
    )
    assert found is not None, f"docs/install.md has no block marked test: {name}"
    return [line for line in found.group(1).splitlines() if line.strip()]


def as_here(line: str, opt: Path) -> str | None:
    if line.startswith("sudo apt "):
        return None
    return line.removeprefix("sudo ").replace("/opt/eventsinkd", str(opt))


def run_lines(lines: list[str], cwd: Path, env: dict[str, str], opt: Path) -> str:
    out = ""
    for line in lines:
        command = as_here(line, opt)
        if command is None:
            continue
        res = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
        out += res.stdout + res.stderr
    return out


def test_the_documented_installs_work_in_a_clean_directory(tmp_path: Path) -> None:
    # A clean copy of what a checkout holds (no venv, no build output).
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # `python3` is this test's interpreter, alone on PATH: never an installed eventsinkd.
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3").symlink_to(sys.executable)
    tools = tmp_path / "tools"
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True, timeout=120)
    subprocess.run(
        [str(tools / "bin" / "pip"), "install", "--quiet", "pipx"],
        check=True,
        timeout=600,
    )
    pipx_bin = tmp_path / "pipx-bin"
    env = {
        "PATH": os.pathsep.join(
            [str(pipx_bin), str(shims), str(tools / "bin"), "/usr/bin", "/bin"]
        ),
        "HOME": str(tmp_path / "home"),
        "PIPX_HOME": str(tmp_path / "pipx-home"),
        "PIPX_BIN_DIR": str(pipx_bin),
        "PIPX_MAN_DIR": str(tmp_path / "pipx-man"),
        **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "SSL_", "LANG", "LC_"))},
    }
    opt = tmp_path / "opt" / "eventsinkd"

    run_lines(doc_block("wheel"), src, env, opt)
    wheels = list((src / "dist").glob("eventsinkd-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels

    out = run_lines(doc_block("pipx"), src, env, opt)
    assert (pipx_bin / "eventsinkd").exists()
    assert "eventsinkd 0.1.0" in out
    assert "config.example.yaml: valid" in out

    out = run_lines(doc_block("venv"), src, env, opt)
    exe = opt / "bin" / "eventsinkd"
    assert exe.exists()
    assert "eventsinkd 0.1.0" in out
    assert "config.example.yaml: valid" in out
    # The example's wal.dir does not exist here: a warning says so, the config is valid.
    assert "WARNING: wal.dir /var/lib/nexus/wal does not exist" in out

    # The systemd unit starts that very command, and verifies with it.
    unit_text = UNIT.read_text()
    assert "ExecStart=/opt/eventsinkd/bin/eventsinkd run -c /etc/eventsinkd/config.yaml" in (
        unit_text
    )
    analyze = need_tool("systemd-analyze", "systemd")
    unit = tmp_path / "eventsinkd.service"
    unit.write_text(unit_text.replace("/opt/eventsinkd", str(opt)))
    res = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert "eventsinkd.service" not in res.stderr, res.stderr
