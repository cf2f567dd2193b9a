"""Secrets: resolving references, and keeping every secret out of what eventsinkd shows.

A reference is ``env:VAR`` (the variable's value), ``file:/path`` (the file's
content with surrounding whitespace trimmed, read again on every reload) or
anything else, taken literally, as Nexus resolves ``mac_key_file``.

What is shown (``check-config``, ``status``, ``/status``, logs, error messages)
never holds a secret: a URL goes through :func:`redact_url` (password and every
query value ``***``), a URL given as a reference is shown as the reference and
its host, and every value a reference resolved to is remembered so that
:func:`scrub` can blank it out of text that came from elsewhere (a library's
error message that quotes a URL). The redaction is written here because it is a
few lines of ``urllib.parse``; no library does exactly this.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "***"
# Shorter values are not scrubbed out of free text: "1" or "on" would blank half a log line.
# They are still never printed by eventsinkd itself (it prints no secret at all).
MIN_SCRUB_LEN = 4


class SecretError(ValueError):
    """A secret reference that cannot be resolved; the message never holds the secret."""


_known: set[str] = set()
_known_lock = threading.Lock()


def remember(value: str | None) -> None:
    """Note ``value`` as a secret: :func:`scrub` blanks it out of any text from now on."""
    if value and len(value) >= MIN_SCRUB_LEN:
        with _known_lock:
            _known.add(value)


def forget(value: str) -> None:
    """Stop scrubbing ``value`` (a short-lived secret, such as an OAuth2 token, long replaced:
    remembering every one would grow without bound)."""
    with _known_lock:
        _known.discard(value)


def scrub(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``, longest first."""
    if not _known:
        return text
    for value in sorted(_known, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def is_reference(ref: str) -> bool:
    return ref.startswith(("env:", "file:"))


def resolve_secret(ref: str) -> str:
    value = _resolve(ref)
    remember(value)
    return value


def _resolve(ref: str) -> str:
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


def show_ref(ref: str | None) -> str:
    """A secret as it may be shown: a reference as itself, a literal value as ``***``."""
    if ref is None:
        return "-"
    return ref if is_reference(ref) else REDACTED


def redact_url(url: str) -> str:
    """``url`` with its password and every query value replaced by ``***`` (the user name,
    host, port and path stay); anything that does not parse as a URL is ``***`` whole."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED if ("@" in url or "?" in url) else url
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None:
        user = parts.username + (f":{REDACTED}" if parts.password is not None else "")
        netloc = f"{user}@{netloc}"
    query = "&".join(f"{k}={REDACTED}" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:
        query = REDACTED
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def remember_url(url: str) -> None:
    """Note a URL's password and query values as secrets (see :func:`scrub`)."""
    try:
        parts = urlsplit(url)
        remember(parts.password)
        for _, value in parse_qsl(parts.query, keep_blank_values=True):
            remember(value)
    except ValueError:
        pass


class ScrubFilter(logging.Filter):
    """Blanks remembered secrets out of every log record, whoever wrote it (a library too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _known:
            return True
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True
