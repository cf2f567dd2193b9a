"""What every command shares: the help layout, ``-c PATH``, loading the config with a
message that says what to do, and printing a refusal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeVar

import shtab
import yaml
from pydantic import BaseModel, ValidationError

from eventsinkd.config.loading import DEFAULT_PATH, ConfigError, load_config
from eventsinkd.config.model import Config

EXIT_CONFIG = 2
M = TypeVar("M", bound=BaseModel)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default at the end of its help, as argparse's
    ArgumentDefaultsHelpFormatter does, but only where there is one to tell: not for a flag
    that is off unless given, nor an option that is unset unless given, nor where the help
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS, []):
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            shown = action.option_strings[0 if default else 1]
        elif isinstance(default, list):
            shown = ",".join(map(str, default))
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def add_config_arg(p: argparse.ArgumentParser) -> None:
    complete_path(
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_PATH,
            metavar="PATH",
            help="the YAML config file",
        )
    )


def complete_path(action: argparse.Action, *, directory: bool = False) -> None:
    """Shell completion (``eventsinkd completion``) offers files (or directories) here."""
    action.complete = shtab.DIRECTORY if directory else shtab.FILE  # type: ignore[attr-defined]


def fail(msg: str, code: int = EXIT_CONFIG) -> int:
    print(f"eventsinkd: {msg}", file=sys.stderr)
    return code


def missing_default(path: Path) -> str | None:
    """The hint for a config that is not there at the default path, else None."""
    if path == DEFAULT_PATH and not path.exists():
        return (
            "not found (the default config path): pass -c PATH, e.g. -c config.example.yaml "
            "from the source tree, or write one here (docs/configuration.md lists every key)"
        )
    return None


def load(path: Path) -> Config:
    """The config at ``path``; ConfigError (with what to do) when it cannot be used."""
    hint = missing_default(path)
    if hint is not None:
        raise ConfigError(path, [hint])
    return load_config(path)


class SectionError(Exception):
    """A config section that cannot be read or used; the message says what is wrong."""


def read_section(path: Path, key: str, model: type[M]) -> M:
    """Only the ``key`` section of the config at ``path``, checked by ``model``. A command
    that needs one section (a probe, a look at the WAL) must not fail on the rest, such as a
    sink's secret in an environment variable that this shell does not have."""
    hint = missing_default(path)
    if hint is not None:
        raise SectionError(f"{path}: {hint}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SectionError(f"cannot read {path}: {exc}") from None
    section = doc.get(key) if isinstance(doc, dict) else None
    try:
        return model.model_validate(section if section is not None else {})
    except ValidationError as exc:
        problem = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in (key, *problem["loc"]))
        msg = str(problem["msg"]).removeprefix("Value error, ")
        raise SectionError(f"{path}: {where}: {msg}") from None
