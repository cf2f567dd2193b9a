"""``auth:`` of an HTTP sink (webhook, otlp): ``basic``, ``bearer`` or ``oauth2`` client
credentials (RFC 6749 §4.4), a discriminated union on ``type``.

Every secret here is a reference as elsewhere (literal, ``env:VAR``, ``file:/path``), checked
when the config is loaded and resolved again when the sink starts (so a reload picks up a
rotated file).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator

from eventsinkd.config.options import Model, check_secret_ref
from eventsinkd.config.secreturl import SecretUrl

AUTH_TYPES = ("basic", "bearer", "oauth2")
# Form fields eventsinkd sets itself; `params` may not override them.
OAUTH2_FIELDS = frozenset({"grant_type", "client_id", "client_secret", "scope", "audience"})


def _required_secret(ref: str) -> str:
    check_secret_ref(ref)
    return ref


Secret = Annotated[str, AfterValidator(_required_secret)]


class BasicAuth(Model):
    type: Literal["basic"]
    user: str = Field(min_length=1, description="no colon (RFC 7617)")
    password: Secret = Field(repr=False, description="a secret: literal, env:VAR or file:/path")

    @field_validator("user")
    @classmethod
    def _no_colon(cls, v: str) -> str:
        if ":" in v:
            raise ValueError("a basic auth user name cannot hold a colon (RFC 7617)")
        return v


class BearerAuth(Model):
    type: Literal["bearer"]
    token: Secret = Field(repr=False, description="a secret: literal, env:VAR or file:/path")


class OAuth2Auth(Model):
    type: Literal["oauth2"]
    token_url: SecretUrl = Field(description="the authorization server's token endpoint")
    client_id: str = Field(min_length=1, description="this client's id")
    client_secret: Secret = Field(
        repr=False, description="a secret: literal, env:VAR or file:/path"
    )
    scope: str | list[str] | None = Field(default=None, description="a string or a list")
    audience: str | None = Field(default=None, description="sent when set (Auth0 and others)")
    params: dict[str, str] = Field(
        default_factory=dict, description="extra form fields of the token request", repr=False
    )
    client_auth: Literal["basic", "post"] = Field(
        default="basic", description="client credentials in an Authorization header, or the form"
    )

    @field_validator("params")
    @classmethod
    def _own_fields(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(OAUTH2_FIELDS & set(v))
        if clash:
            raise ValueError(f"{', '.join(clash)} are set by eventsinkd itself (use their keys)")
        return v

    @property
    def scope_text(self) -> str | None:
        """``scope`` as the form field carries it: space-separated (RFC 6749 §3.3)."""
        return " ".join(self.scope) if isinstance(self.scope, list) else self.scope


def _auth_type(data: object) -> str | None:
    if isinstance(data, dict):
        kind = data.get("type")
        return kind if isinstance(kind, str) else None
    return getattr(data, "type", None)


AuthConfig = Annotated[
    Annotated[BasicAuth, Tag("basic")]
    | Annotated[BearerAuth, Tag("bearer")]
    | Annotated[OAuth2Auth, Tag("oauth2")],
    Discriminator(
        _auth_type,
        custom_error_type="auth_type",
        custom_error_message="unknown or missing auth type; use one of " + ", ".join(AUTH_TYPES),
    ),
]


def auth_clash(
    auth: BasicAuth | BearerAuth | OAuth2Auth | None, url: SecretUrl, headers: dict[str, str]
) -> None:
    """Refuse two sources of one Authorization header (``auth``, a URL's user, a header)."""
    if auth is None:
        return
    if url.username is not None:
        raise ValueError("give the credentials either in auth or in the url's user:password@")
    if any(name.lower() == "authorization" for name in headers):
        raise ValueError("give the credentials either in auth or in an Authorization header")


def describe_auth(auth: BasicAuth | BearerAuth | OAuth2Auth | None) -> str:
    """What check-config says of a sink's auth: never a secret."""
    if auth is None:
        return ""
    if auth.type == "basic":
        return f" auth=basic (user {auth.user})"
    if auth.type == "bearer":
        return " auth=bearer"
    return f" auth=oauth2 (token_url {auth.token_url.shown}, client_id {auth.client_id})"
