"""``SecretUrl``: an http(s) URL given literally or as a secret reference (``env:VAR``,
``file:/path``), for a sink's ``url`` (and any other URL that may carry a secret, such as a
proxy's).

``str()`` is the real URL, for the HTTP client only; what is shown anywhere is
:attr:`SecretUrl.shown`: a literal URL with its password and query values ``***``, a
reference as itself and the host (``env:SLACK_URL (hooks.slack.com)``), since a URL kept
out of the config file (Slack's) may hold its secret in the path. Two values are equal
when their reference and what it resolved to are, so a reload sees a rotated file.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, GetCoreSchemaHandler, TypeAdapter, ValidationError
from pydantic_core import core_schema

from eventsinkd.common.secrets import (
    SecretError,
    is_reference,
    redact_url,
    remember_url,
    resolve_secret,
)

_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _in_words(kind: str, msg: str, raw: str) -> str:
    """pydantic's complaint about a URL, as what to write instead (never the URL itself)."""
    if kind == "url_scheme":
        return (
            "must start with https:// or http:// (syslog://, fluentd:// and nats:// "
            "URLs go with a sink of that type: set its type)"
        )
    if kind == "url_parsing" and "://" not in raw:
        return "has no scheme: write it as https://host/path (or http://host:port/path)"
    if kind == "url_parsing":
        reason = msg.partition(", ")[2] or "cannot be read as a URL"
        return f"is not a valid URL ({reason}): write it as https://host/path"
    return msg.replace("Input should be", "must be")


def resolved(ref: object) -> tuple[str, str]:
    """``ref`` as configured (stripped), and the URL text it gives: itself, or what its
    env:/file: reference holds. ValueError (never echoing the URL) for anything else, or a
    reference that cannot be read."""
    if not isinstance(ref, str):
        raise ValueError("must be an http:// or https:// URL (or env:VAR, file:/path)")
    ref = ref.strip()
    raw = ref
    if is_reference(raw):
        try:
            raw = resolve_secret(raw)
        except SecretError as exc:
            raise ValueError(str(exc)) from None
    return ref, raw


class SecretUrl:
    __slots__ = ("_parts", "ref", "value")

    def __init__(self, ref: str, value: str) -> None:
        self.ref = ref  # as configured: a URL, env:VAR or file:/path
        self.value = value  # the URL itself (normalised as pydantic's AnyHttpUrl does)
        self._parts = urlsplit(value)

    @classmethod
    def parse(cls, ref: object) -> SecretUrl:
        """Validate ``ref``; errors never echo the URL (it may hold a secret)."""
        if isinstance(ref, SecretUrl):
            return ref
        configured, raw = resolved(ref)
        remember_url(raw)
        try:
            url = _HTTP_URL.validate_python(raw)
        except ValidationError as exc:
            err = exc.errors(include_input=False, include_url=False)[0]
            where = f"{configured} holds no http(s) URL: " if is_reference(configured) else ""
            raise ValueError(f"{where}{_in_words(err['type'], err['msg'], raw)}") from None
        return cls(configured, str(url))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.shown, when_used="always"
            ),
            json_schema_input_schema=core_schema.str_schema(),
        )

    @property
    def shown(self) -> str:
        """What may be shown of this URL anywhere (check-config, status, logs)."""
        if is_reference(self.ref):
            return f"{self.ref} ({self.host})"
        return redact_url(self.value)

    @property
    def scheme(self) -> str:
        return self._parts.scheme

    @property
    def host(self) -> str:
        return self._parts.hostname or ""

    @property
    def port(self) -> int:
        return self._parts.port or _DEFAULT_PORTS.get(self.scheme, 0)

    @property
    def path(self) -> str:
        return self._parts.path

    @property
    def query(self) -> str:
        return self._parts.query

    @property
    def username(self) -> str | None:
        return self._parts.username

    @property
    def password(self) -> str | None:
        return self._parts.password

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"SecretUrl({self.shown!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretUrl):
            return NotImplemented
        return (self.ref, self.value) == (other.ref, other.value)

    def __hash__(self) -> int:
        return hash((self.ref, self.value))
