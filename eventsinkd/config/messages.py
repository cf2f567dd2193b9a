"""Validation errors in an operator's words: "did you mean" for an unknown key, and plain
words instead of pydantic's ("Input should be a valid integer, unable to parse string...").

The close match comes from :mod:`difflib` over the field names of the model at the
unknown key's level, found by walking the model along the error's location (a sink's
``type`` and an ``auth`` type appear in it as pydantic's union tags).
"""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from eventsinkd.config.model import Config

# pydantic's error type -> what the value must be, in words.
PLAIN: dict[str, str] = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text (quote it if YAML reads it as a number or true/false)",
    "list_type": "must be a list: [a, b], or one '- item' line each",
    "dict_type": "must be a mapping: 'key: value' lines indented under it",
    "model_type": "must be a mapping: 'key: value' lines indented under it",
    "model_attributes_type": "must be a mapping: 'key: value' lines indented under it",
    "path_type": "must be a path",
    "missing": "required key is missing",
}


def plain(err: Any) -> str:
    """The message of one pydantic error (from ``errors(include_input=False)``) in words."""
    kind = err["type"]
    if kind == "extra_forbidden":
        return unknown_key(tuple(err["loc"]))
    if kind in PLAIN:
        return PLAIN[kind]
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg.replace("Input should be", "must be").replace("Input should", "must")


def _unwrap(t: Any) -> list[Any]:
    """The types a field's annotation may hold: Annotated, Optional and unions taken apart."""
    origin = get_origin(t)
    if origin is Annotated:
        return _unwrap(get_args(t)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(t) for m in _unwrap(arg)]
    return [t]


def _models(candidates: list[Any]) -> list[type[BaseModel]]:
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def _tagged(model: type[BaseModel], tag: str) -> bool:
    field = model.model_fields.get("type")
    return (
        field is not None
        and get_origin(field.annotation) is Literal
        and (tag in get_args(field.annotation))
    )


def keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model allows at ``loc`` (pydantic's location of a key there)."""
    here: list[Any] = [Config]
    for part in loc:
        if isinstance(part, int):  # an item of a list
            here = [m for t in here if get_origin(t) is list for m in _unwrap(get_args(t)[0])]
            continue
        models = _models(here)
        tagged = [m for m in models if _tagged(m, str(part))]
        if tagged:  # a union's tag (a sink's or an auth's type), not a key
            here = tagged
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return []
        here = _unwrap(fields[0].annotation)
    names: list[str] = []
    for model in _models(here):
        names += [n for n in model.model_fields if n not in names]
        if hasattr(model, "_secret_alias"):
            names.append("secret")  # a webhook sink's one-secret form of secrets
    return names


def unknown_key(loc: tuple[Any, ...]) -> str:
    key, known = str(loc[-1]), keys_at(loc[:-1])
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    if known:
        return f"unknown key; the keys here are {', '.join(known)}"
    return "unknown key"
