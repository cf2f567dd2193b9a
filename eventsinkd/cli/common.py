"""What every command shares: the help layout, ``-c PATH``, loading the config with a
message that says what to do, and printing a refusal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import shtab

from eventsinkd.config.loading import DEFAULT_PATH, ConfigError, load_config
from eventsinkd.config.model import Config

EXIT_CONFIG = 2


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
