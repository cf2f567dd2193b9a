"""What a reload compares besides the config text: the content of every file a sink reads its
secrets, certificates and keys from (``file:`` references, ``tls`` files, ``creds_file``).

A sink whose files changed is replaced as if its config had changed (its events handed to
its successor, which opens its transport with what the files hold now), so a rotated token,
webhook secret or certificate takes effect on SIGHUP without a restart. ``env:`` values
cannot change under a running process and are not looked at.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from eventsinkd.config.secreturl import SecretUrl


def files_digest(model: BaseModel) -> str:
    """A digest of the content of every file ``model`` (a sink's config) refers to."""
    h = hashlib.sha256()
    _walk(model, h)
    return h.hexdigest()


def _walk(value: object, h: hashlib._Hash) -> None:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _walk(getattr(value, name), h)
    elif isinstance(value, list | tuple):
        for item in value:
            _walk(item, h)
    elif isinstance(value, dict):
        for item in value.values():
            _walk(item, h)
    elif isinstance(value, SecretUrl):
        _walk(value.ref, h)
    elif isinstance(value, str) and value.startswith("file:"):
        _read(Path(value[5:]), h)
    elif isinstance(value, Path):
        _read(value, h)


def _read(path: Path, h: hashlib._Hash) -> None:
    h.update(str(path).encode() + b"\0")
    try:
        h.update(hashlib.sha256(path.read_bytes()).digest())
    except OSError as exc:  # gone or unreadable: a change too (the sink then reports it)
        h.update(f"error {exc.errno}".encode())
