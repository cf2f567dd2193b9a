"""Resolve secret references the way Nexus resolves ``mac_key_file``.

A reference is ``env:VAR`` (the variable's value), ``file:/path`` (the file's
content with surrounding whitespace trimmed) or anything else, taken literally.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(ValueError):
    """A secret reference that cannot be resolved; the message never holds the secret."""


def resolve_secret(ref: str) -> str:
    if ref.startswith("env:"):
        name = ref[4:]
        if not name:
            raise SecretError("env: reference names no variable")
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"environment variable {name} is not set")
        if value == "":
            raise SecretError(f"environment variable {name} is empty")
        return value
    if ref.startswith("file:"):
        path = Path(ref[5:])
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise SecretError(f"{path} is not UTF-8 text") from None
        if value == "":
            raise SecretError(f"{path} is empty")
        return value
    if ref == "":
        raise SecretError("secret is empty")
    return ref
