"""Each sink ``type``'s own settings, and ``events.sinks`` as a discriminated union on
``type`` (``webhook`` when absent). What they share is in :mod:`eventsinkd.config.options`;
:mod:`eventsinkd.config.model` holds the rest of the file's model.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from eventsinkd.common.secrets import SecretError, redact_url, remember, resolve_secret
from eventsinkd.config.auth import AuthConfig, auth_clash
from eventsinkd.config.cloudevents import CloudEventsConfig, Format, WebhookShaping, format_keys
from eventsinkd.config.options import (
    Batched,
    Endpoint,
    ProxySetting,
    SecretRef,
    check_secret_ref,
    parse_endpoint,
)
from eventsinkd.config.secreturl import SecretUrl
from eventsinkd.config.urltemplate import TemplatedUrl
from eventsinkd.events.templates import template_fields

WHSEC_PREFIX = "whsec_"
RESERVED_HEADERS = frozenset(
    {"content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
# Set by the HTTP client itself (framing and the connection).
HTTP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token


def decode_whsec(value: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64>``."""
    if not value.startswith(WHSEC_PREFIX):
        raise ValueError("a webhook secret must start with whsec_")
    try:
        key = base64.b64decode(value[len(WHSEC_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes of key")
    return key


def _check_secret(ref: str) -> str:
    try:
        decode_whsec(resolve_secret(ref))
    except SecretError as exc:
        raise ValueError(str(exc)) from None
    return ref


class WebhookSinkConfig(WebhookShaping):
    type: Literal["webhook"] = "webhook"
    url: Annotated[
        TemplatedUrl,
        Field(
            description="http(s) URL, or env:VAR / file:/path holding it; {field} templates "
            "in its path and query"
        ),
    ]
    auth: AuthConfig | None = Field(
        default=None, description="an Authorization header: basic, bearer or oauth2"
    )
    secrets: list[Annotated[str, AfterValidator(_check_secret)]] = Field(
        default_factory=list,
        description="whsec_... secrets (literal, env:VAR or file:/path); several = rotation",
        repr=False,
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="static extra headers (never shown); for credentials use auth",
        repr=False,
    )
    proxy: ProxySetting = None

    @model_validator(mode="before")
    @classmethod
    def _secret_alias(cls, data: object) -> object:
        # `secret: x` is accepted as the one-element form of `secrets: [x]`.
        if isinstance(data, dict) and "secret" in data:
            data = dict(data)
            if "secrets" in data:
                raise ValueError("give either secret or secrets, not both")
            secret = data.pop("secret")
            data["secrets"] = [secret] if secret is not None else []
        return data

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(k for k in v if k.lower() in RESERVED_HEADERS | HTTP_HEADERS)
        if clash:
            raise ValueError(f"header(s) {', '.join(clash)} are set by eventsinkd itself")
        for name, value in v.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name}: a value cannot hold a line break or NUL")
            remember(value)  # header values may be credentials: never shown
            try:
                template_fields(value)
            except ValueError as exc:
                raise ValueError(f"header {name}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_authorization(self) -> WebhookSinkConfig:
        auth_clash(self.auth, self.url, self.headers)
        return self

    @model_validator(mode="after")
    def _templates_one_by_one(self) -> WebhookSinkConfig:
        templated = self.url.templated or any(template_fields(v) for v in self.headers.values())
        if self.batched and templated:
            raise ValueError(
                "a templated url or header is filled per event, and a batch holds many: use "
                "cloudevents.mode binary or structured (one event per request)"
            )
        return self

    @cached_property
    def signing_keys(self) -> list[bytes]:
        return [decode_whsec(resolve_secret(ref)) for ref in self.secrets]


SYSLOG_FACILITIES = {
    name: code
    for code, name in enumerate(
        [
            "kern",
            "user",
            "mail",
            "daemon",
            "auth",
            "syslog",
            "lpr",
            "news",
            "uucp",
            "cron",
            "authpriv",
            "ftp",
            "ntp",
            "security",
            "console",
            "solaris-cron",
            "local0",
            "local1",
            "local2",
            "local3",
            "local4",
            "local5",
            "local6",
            "local7",
        ]
    )
}
UDP_MAX_PAYLOAD = 65_507
# RELP has no registered port: 0 stands for "give one" (checked in SyslogSinkConfig._url).
SYSLOG_SCHEMES = {
    "syslog": 514,
    "syslog+tcp": 514,
    "syslog+tls": 6514,
    "syslog+relp": 0,
    "syslog+relp+tls": 0,
}
RELP_SCHEMES = ("syslog+relp", "syslog+relp+tls")
RELP_DEFAULT_WINDOW = 128  # librelp's default window of unanswered messages
_PRINTUSASCII = re.compile(r"[!-~]+")


class SyslogSinkConfig(Batched):
    type: Literal["syslog"]
    url: Annotated[
        str,
        Field(
            description="syslog:// (UDP), syslog+tcp://, syslog+tls://, syslog+relp:// or "
            "syslog+relp+tls://"
        ),
    ]
    facility: str = Field(default="local0", description="local0..local7, daemon, user...")
    tag: str = Field(default="nexus", description="APP-NAME")
    hostname: str | None = Field(default=None, description="HOSTNAME; default this host's name")
    framing: Literal["octet-counting", "lf"] = Field(
        default="octet-counting", description="TCP and TLS only (RFC 6587)"
    )
    max_message_bytes: int = Field(
        default=8192,
        ge=480,
        le=1024 * 1024,
        description="larger messages are cut or refused; at most 65507 over UDP",
    )
    oversize: Literal["truncate", "refuse"] = Field(
        default="refuse", description="refused = a dead letter; truncated = counted"
    )
    relp_window: int = Field(
        default=RELP_DEFAULT_WINDOW,
        ge=1,
        le=1000,
        description="RELP only: messages sent that rsyslog has not answered yet",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        endpoint = parse_endpoint(v, SYSLOG_SCHEMES)
        if endpoint.port == 0:
            raise ValueError(
                f"{endpoint.scheme}:// needs a port (RELP has no standard one): give the port "
                f"of rsyslog's imrelp input, e.g. {endpoint.scheme}://logs.internal:2514"
            )
        return v

    @field_validator("facility")
    @classmethod
    def _facility(cls, v: str) -> str:
        if v not in SYSLOG_FACILITIES:
            raise ValueError("unknown facility; use one of " + ", ".join(SYSLOG_FACILITIES))
        return v

    @field_validator("tag")
    @classmethod
    def _app_name(cls, v: str) -> str:
        if not _PRINTUSASCII.fullmatch(v) or len(v) > 48:
            raise ValueError("RFC 5424 APP-NAME: 1-48 printable ASCII characters, no spaces")
        return v

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and (not _PRINTUSASCII.fullmatch(v) or len(v) > 255):
            raise ValueError("RFC 5424 HOSTNAME: 1-255 printable ASCII characters, no spaces")
        return v

    @model_validator(mode="after")
    def _fits_a_datagram(self) -> SyslogSinkConfig:
        if self.endpoint.scheme == "syslog" and self.max_message_bytes > UDP_MAX_PAYLOAD:
            raise ValueError(
                f"max_message_bytes {self.max_message_bytes} is over {UDP_MAX_PAYLOAD}, "
                "the most a UDP datagram holds"
            )
        return self

    @model_validator(mode="after")
    def _relp_keys(self) -> SyslogSinkConfig:
        given = self.model_fields_set
        scheme = self.endpoint.scheme
        if scheme not in RELP_SCHEMES:
            if "relp_window" in given:
                raise ValueError("relp_window is for syslog+relp:// and syslog+relp+tls:// only")
            return self
        if "framing" in given:
            raise ValueError(f"framing does not apply to {scheme}:// (RELP frames messages)")
        if scheme == "syslog+relp" and "tls" in given:
            raise ValueError(
                "syslog+relp:// is RELP over plain TCP and uses no tls options: "
                "for RELP over TLS use syslog+relp+tls://"
            )
        return self

    @property
    def endpoint(self) -> Endpoint:
        return parse_endpoint(self.url, SYSLOG_SCHEMES)


class OtlpSinkConfig(Batched):
    type: Literal["otlp"]
    url: Annotated[SecretUrl, Field(description="the collector; records go to {url}/v1/logs")]
    auth: AuthConfig | None = Field(
        default=None, description="an Authorization header: basic, bearer or oauth2"
    )
    encoding: Literal["json", "protobuf"] = Field(
        default="json", description="OTLP/HTTP body: JSON or binary protobuf"
    )
    headers: dict[str, Annotated[str, AfterValidator(check_secret_ref)]] = Field(
        default_factory=dict,
        description="values: literal, env:VAR or file:/path (e.g. an Authorization token)",
        repr=False,
    )
    service_name: str = Field(default="bubblefish-nexus", description="resource service.name")
    proxy: ProxySetting = None

    @field_validator("headers")
    @classmethod
    def _no_content_type(cls, v: dict[str, str]) -> dict[str, str]:
        if any(k.lower() in ("content-type", "user-agent") for k in v):
            raise ValueError("Content-Type and User-Agent are set by eventsinkd itself")
        return v

    @model_validator(mode="after")
    def _one_authorization(self) -> OtlpSinkConfig:
        auth_clash(self.auth, self.url, self.headers)
        return self

    @cached_property
    def resolved_headers(self) -> dict[str, str]:
        return {k: resolve_secret(v) for k, v in self.headers.items()}

    @property
    def logs_url(self) -> str:
        return str(self.url).rstrip("/") + "/v1/logs"


FLUENTD_SCHEMES = {"fluentd": 24224, "fluentd+tls": 24224}


class FluentdSinkConfig(Batched):
    type: Literal["fluentd"]
    url: Annotated[str, Field(description="fluentd://host:port or fluentd+tls://host:port")]
    tag: str = Field(default="nexus.events", min_length=1, description="the fluentd tag")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_endpoint(v, FLUENTD_SCHEMES)
        return v

    @property
    def endpoint(self) -> Endpoint:
        return parse_endpoint(self.url, FLUENTD_SCHEMES)


NATS_SCHEMES = {"nats": 4222, "tls": 4222}
_BAD_SUBJECT_CHARS = re.compile(r"[\s\x00-\x1f\x7f*>]")
NATS_SUBJECT_FIELDS = frozenset(
    {"event_type", "source", "subject", "destination", "actor_type", "actor_id"}
)


class NatsSinkConfig(Batched):
    type: Literal["nats"]
    url: Annotated[list[str], Field(description="nats:// or tls:// servers; several for a cluster")]
    subject: str = Field(
        default="nexus.events.{event_type}",
        description="template; fields: " + ", ".join(sorted(NATS_SUBJECT_FIELDS)),
    )
    format: Format = Field(
        default="standard-webhooks",
        description="standard-webhooks (Nexus's body) or cloudevents (structured)",
    )
    cloudevents: CloudEventsConfig = Field(
        default_factory=CloudEventsConfig,
        description="with format: cloudevents: mode, source and type_prefix",
    )
    creds_file: Path | None = Field(default=None, description="a NATS .creds file (JWT, NKey)")
    token: SecretRef = Field(default=None, repr=False, description="a token (a secret)")
    user: str | None = Field(default=None, description="with password")
    password: SecretRef = Field(default=None, repr=False, description="with user (a secret)")

    @field_validator("url", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one server")
        for server in v:
            parse_endpoint(server, NATS_SCHEMES)
        return v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        template_fields(v, NATS_SUBJECT_FIELDS)
        probe = v.format(**dict.fromkeys(NATS_SUBJECT_FIELDS, "x"))
        if not probe or any(not t or _BAD_SUBJECT_CHARS.search(t) for t in probe.split(".")):
            raise ValueError(
                "not a valid NATS subject (an empty token, whitespace, a control character, * or >)"
            )
        return v

    @field_validator("creds_file")
    @classmethod
    def _creds(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} is not a readable file")
        return v

    @model_validator(mode="after")
    def _structured(self) -> NatsSinkConfig:
        format_keys(self.format, self.cloudevents)
        if self.cloudevents.mode != "structured":
            raise ValueError(
                "a nats sink carries CloudEvents in structured mode (the event in the "
                "message): leave cloudevents.mode out"
            )
        return self

    @model_validator(mode="after")
    def _one_credential(self) -> NatsSinkConfig:
        given = [n for n in ("creds_file", "token", "user") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give one of creds_file, token or user/password, not {' and '.join(given)}"
            )
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        return self

    @property
    def target(self) -> str:
        return ",".join(map(redact_url, self.url))


SINK_TYPES = ("webhook", "syslog", "otlp", "fluentd", "nats")


def _sink_type(data: object) -> str:
    if isinstance(data, dict):
        return str(data.get("type", "webhook"))
    return str(getattr(data, "type", "webhook"))


SinkConfig = Annotated[
    Annotated[WebhookSinkConfig, Tag("webhook")]
    | Annotated[SyslogSinkConfig, Tag("syslog")]
    | Annotated[OtlpSinkConfig, Tag("otlp")]
    | Annotated[FluentdSinkConfig, Tag("fluentd")]
    | Annotated[NatsSinkConfig, Tag("nats")],
    Discriminator(
        _sink_type,
        custom_error_type="sink_type",
        custom_error_message="unknown sink type; use one of " + ", ".join(SINK_TYPES),
    ),
]
