"""``TemplatedUrl``: a webhook's ``url`` (literal or a secret reference, as
:class:`~eventsinkd.config.secreturl.SecretUrl`) that may hold templates
(:mod:`eventsinkd.events.templates`) in its path and query.

A template anywhere else (scheme, user, password, host, port, fragment) is refused: the
receiver a sink talks to (and the connections it pools) must not depend on an event. The
URL's literal parts are normalised as any other URL's (pydantic's ``AnyHttpUrl``); the
templates are kept as they are written, and :attr:`TemplatedUrl.value` is the URL with
them (``https://crm.example/users/{subject}/memories``).
"""

from __future__ import annotations

from string import Formatter
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError
from pydantic.networks import AnyHttpUrl

from eventsinkd.common.secrets import is_reference, remember_url
from eventsinkd.config.secreturl import SecretUrl, resolved
from eventsinkd.events.templates import template_fields

_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)
OUTSIDE = (
    "a template can only be in the URL's path or query, not in its scheme, user, password, "
    "host, port or fragment: the receiver cannot depend on the event"
)


def _marker(i: int) -> str:
    # Letters and digits: normalising the URL leaves them as they are.
    return f"eskdtpl{i}q"


class TemplatedUrl(SecretUrl):
    __slots__ = ("fields",)

    def __init__(self, ref: str, value: str, fields: frozenset[str] = frozenset()) -> None:
        super().__init__(ref, value)
        self.fields = fields

    @classmethod
    def parse(cls, ref: object) -> TemplatedUrl:
        if isinstance(ref, TemplatedUrl):
            return ref
        configured, raw = resolved(ref)
        if "{" not in raw and "}" not in raw:
            plain = SecretUrl.parse(configured)
            return cls(plain.ref, plain.value)
        remember_url(raw)
        fields = template_fields(raw)
        scheme_end = raw.find("://")
        authority_end = len(raw)
        for sep in "/?#":
            at = raw.find(sep, scheme_end + 3 if scheme_end >= 0 else 0)
            if at >= 0:
                authority_end = min(authority_end, at)
        fragment = raw.find("#")
        first = min(raw.find(c) for c in "{}" if c in raw)
        if first < authority_end or (fragment >= 0 and raw.find("{", fragment) >= 0):
            raise ValueError(OUTSIDE)
        # Each field becomes a marker for the URL to be checked and normalised, then is put
        # back; literal braces ({{ and }}) are percent-encoded.
        names: list[str] = []
        pieces: list[str] = []
        for i, (literal, name, _, _) in enumerate(_parse(raw)):
            pieces.append(literal.replace("{", "%7B").replace("}", "%7D"))
            if name is not None:
                names.append(name)
                pieces.append(_marker(i))
        try:
            url = str(_HTTP_URL.validate_python("".join(pieces)))
        except ValidationError as exc:
            why = exc.errors(include_input=False, include_url=False)[0]["msg"]
            where = f"{configured} holds no http(s) URL: " if is_reference(configured) else ""
            raise ValueError(f"{where}{why}") from None
        parts = urlsplit(url)
        if any(_marker(i) in parts.netloc.lower() for i in range(len(pieces))):
            raise ValueError(OUTSIDE)
        for i, (_, name, _, _) in enumerate(_parse(raw)):
            if name is not None:
                url = url.replace(_marker(i), "{" + name + "}", 1)
        return cls(configured, url, fields)

    @property
    def templated(self) -> bool:
        return bool(self.fields)

    @property
    def origin(self) -> str:
        """``scheme://[user:password@]host[:port]/``: what the sink's connections go to."""
        parts = urlsplit(self.value)
        return f"{parts.scheme}://{parts.netloc}/"

    @property
    def target_template(self) -> str:
        """The request target's template: the path, and ``?`` and the query if any."""
        return self.path + (f"?{self.query}" if self.query else "")


def _parse(text: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return list(Formatter().parse(text))
