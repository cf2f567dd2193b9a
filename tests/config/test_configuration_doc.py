"""docs/configuration.md is generated from the config model and kept up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from eventsinkd.config.model import RESTART, Config, EventsConfig, WalConfig, keys_marked
from eventsinkd.config.reference import markdown, missing_descriptions

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "configuration.md"


def test_the_page_is_what_the_model_generates() -> None:
    # Run as the page says it is made, so that the command in its header stays right.
    res = subprocess.run(
        [sys.executable, "-m", "eventsinkd.config.reference"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert res.stdout == markdown()
    assert DOC.read_text() == res.stdout, (
        "docs/configuration.md is stale: run "
        "`python -m eventsinkd.config.reference > docs/configuration.md`"
    )


def test_every_key_has_a_description() -> None:
    assert missing_descriptions() == []


def test_every_key_is_on_the_page_with_its_default_and_reload() -> None:
    text = DOC.read_text()
    for name in Config.model_fields:
        assert f"| `{name}` |" in text
    for name in WalConfig.model_fields:
        assert f"| `wal.{name}` |" in text
    for name in EventsConfig.model_fields:
        assert f"| `events.{name}` |" in text
    # The reload column follows the marks on the fields.
    for name in keys_marked(EventsConfig, RESTART):
        row = next(r for r in text.splitlines() if r.startswith(f"| `events.{name}` |"))
        assert "| restart |" in row, row
    row = next(r for r in text.splitlines() if r.startswith("| `events.max_inflight` |"))
    assert "| `1000` | yes (every sink is rebuilt) |" in row, row
    row = next(r for r in text.splitlines() if r.startswith("| `wal.dir` |"))
    assert "**required**" in row and "| restart |" in row
