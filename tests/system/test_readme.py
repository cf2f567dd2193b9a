"""The README: short, the guarantees near the top, its commands the ones the tests run, and
every link it gives to a file of the checkout there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
MARKED = re.compile(r"<!-- test: ([\w-]+)\b.*?-->\n```sh\n(.*?)```", re.S)


def test_the_readme_is_read_in_five_minutes() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    headings = [line for line in lines if line.startswith("## ")]
    assert headings.index("## The guarantees at a glance") <= 5  # among the first sections


def test_its_commands_are_the_tested_ones() -> None:
    """Each code block the README marks is the same block of the doc whose test runs it
    (tests/cli/test_try_it.py, tests/system/test_install.py)."""
    docs = {
        name: body
        for doc in (ROOT / "docs").glob("*.md")
        for name, body in MARKED.findall(doc.read_text())
    }
    marked = MARKED.findall(README.read_text())
    assert {name for name, _ in marked} == {"try-it", "pipx", "venv"}
    for name, body in marked:
        assert body == docs[name], f"the README's {name} block differs from the doc's"


def test_its_links_to_the_checkout_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), target
