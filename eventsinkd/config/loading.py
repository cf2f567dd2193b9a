"""Load the YAML config file into :class:`Config`, with errors an operator can act on.

Every problem is one line naming the key path (``events.sinks[1].url``) and,
where the YAML parser knows it, the file line. Secret values never appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from eventsinkd.common.secrets import remember, remember_url, scrub
from eventsinkd.config.auth import AUTH_TYPES
from eventsinkd.config.messages import plain
from eventsinkd.config.model import Config
from eventsinkd.config.sinks import SINK_TYPES

DEFAULT_PATH = Path("/etc/eventsinkd/config.yaml")

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


def key_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _lines(node: yaml.Node, loc: Loc, out: dict[Loc, int], dups: list[str]) -> None:
    """Map every key path to its 1-based line; note duplicate mapping keys."""
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                dups.append(
                    f"{key_path((*loc, key))} (line {key_node.start_mark.line + 1}): duplicate key"
                )
            seen.add(key)
            out[(*loc, key)] = key_node.start_mark.line + 1
            _lines(value_node, (*loc, key), out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*loc, i), out, dups)


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def _config_loc(err: Any) -> Loc:
    """The key path of an error, without the sink type pydantic puts after a sink's index."""
    loc: Loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
    out: list[str | int] = []
    for part in loc:
        if part in SINK_TYPES and len(out) >= 2 and out[-2] == "sinks" and isinstance(out[-1], int):
            continue
        if part in AUTH_TYPES and out and out[-1] == "auth":
            continue
        out.append(part)
    if err["type"] in ("sink_type", "auth_type"):
        out.append("type")
    return tuple(out)


def parse_config(text: str, path: Path) -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}not valid YAML: {problem}"]) from None
    if data is None:
        raise ConfigError(path, ["the file is empty; at least wal.dir is required"])
    if not isinstance(data, dict):
        raise ConfigError(path, ["the top level must be a mapping of keys"])
    lines: dict[Loc, int] = {}
    dups: list[str] = []
    if node is not None:
        _lines(node, (), lines, dups)
    if dups:
        raise ConfigError(path, dups)
    _remember_secrets(data)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        found = [
            (_config_loc(err), scrub(plain(err)))  # a message may echo a value
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise ConfigError(path, _located(found, lines)) from None
    # Checks across sections, made once each section is valid on its own.
    found = cfg.events.unproduced_filters()
    if found:
        raise ConfigError(path, _located(found, lines))
    return cfg


# Keys whose values are secrets (or references to them), and keys whose values' values are.
SECRET_KEYS = frozenset({"password", "token", "client_secret", "secret", "secrets", "mac_key"})
SECRET_MAPS = frozenset({"headers"})


def _remember_secrets(data: object, key: str | None = None) -> None:
    """Note every secret of the raw config before it is validated, so that no error message
    can show one (pydantic's messages may echo an input)."""
    if isinstance(data, dict):
        for k, v in data.items():
            if key in SECRET_MAPS and isinstance(v, str):
                remember(v)
            else:
                _remember_secrets(v, str(k))
    elif isinstance(data, list):
        for item in data:
            _remember_secrets(item, key)
    elif isinstance(data, str):
        if key in SECRET_KEYS:
            remember(data)
        elif "://" in data:
            remember_url(data)


def _located(found: list[tuple[Loc, str]], lines: dict[Loc, int]) -> list[str]:
    problems = []
    for loc, message in found:
        line = _line_for(loc, lines)
        where = f" (line {line})" if line is not None else ""
        problems.append(f"{key_path(loc)}{where}: {message}")
    return problems


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["not UTF-8 text"]) from None
    return parse_config(text, path)
