"""Templates over an event's fields (``{subject}``, ``{source}``...), filled per event.

One engine for every place a sink's config names fields: a NATS subject, a webhook URL's
path and query, header values and the CloudEvents ``source``. Each place says how a value
is written there (its *escape*): a NATS subject token, a percent-encoded path segment or
query value, a header value. A value never reaches the output unescaped, so it can never
change the structure around it (a ``/`` in a subject does not add a path segment).

The syntax is Python's ``str.format`` (parsed by :class:`string.Formatter`): ``{field}``,
``{{`` and ``}}`` for literal braces; conversions (``!r``), format specs (``:>3``),
attributes and indexes are refused, so a template is only literals and fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from string import Formatter
from typing import Any
from urllib.parse import quote

from eventsinkd.events import EVENT_FIELDS, Event

# Every field a template may name: the body's fields that identify the event.
FIELDS = EVENT_FIELDS
MAX_CACHED = 4096  # rendered values kept, for templates with body fields

Escape = Callable[[str], str]


def template_fields(text: str, allowed: Collection[str] = FIELDS) -> frozenset[str]:
    """The fields ``text`` names; ValueError (saying what to write instead) if it is not a
    template of literals and ``allowed`` fields."""
    names: set[str] = set()
    unknown: list[str] = []
    try:
        parsed = list(Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"{{{name}...}}: a template field takes no !conversion or :format")
        if name not in allowed:
            unknown.append(name or "{}")
        names.add(name)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(sorted(set(unknown)))}; use " + ", ".join(sorted(allowed))
        )
    return frozenset(names)


def _str(value: object) -> str:
    return "" if value is None else str(value)


def path_segment(value: object) -> str:
    """``value`` as (part of) one URL path segment: every byte but unreserved ones
    percent-encoded (UTF-8), so ``/``, ``?``, ``#``, ``%`` and spaces stay inside it. ``.``
    and ``..`` (which would climb the path) are written ``%2E`` and ``%2E%2E``; an empty value
    becomes ``_`` (a path segment never goes missing)."""
    text = quote(_str(value), safe="")
    if not text:
        return "_"
    if text in (".", ".."):
        return "%2E" * len(text)
    return text


def query_value(value: object) -> str:
    """``value`` as (part of) one query value: percent-encoded (``&``, ``=``, ``+`` and ``#``
    included); an empty value stays empty."""
    return quote(_str(value), safe="")


# Printable ASCII but '"' and '%': what CloudEvents' HTTP binding leaves as is in a header.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


_HEADER_AS_IS = re.compile(r"[!#$&-~]*")  # _HEADER_SAFE as a pattern: most values are


def header_value(value: object) -> str:
    """``value`` in an HTTP header, as the CloudEvents HTTP binding writes ce- headers: space,
    ``"``, ``%`` and everything outside printable ASCII percent-encoded (UTF-8)."""
    text = _str(value)
    if _HEADER_AS_IS.fullmatch(text):  # (a third of quote()'s cost)
        return text
    return quote(text, safe=_HEADER_SAFE)


class Template:
    """A template, its fields filled from each event and written with ``escape``.

    Rendered values are cached: the fields a template uses (source, actor...) take few
    values, so each combination is rendered once, not once per event (the cache is emptied
    when full). ``static`` fields have one value for the whole run (the host's name).
    """

    def __init__(
        self,
        text: str,
        escape: Escape,
        *,
        allowed: Collection[str] = FIELDS,
        static: Mapping[str, str] | None = None,
    ) -> None:
        self.text = text
        self.fields = template_fields(text, allowed)
        self._escape = escape
        static = dict(static or {})
        # Literals as they are; a static field escaped once, here.
        pieces: list[tuple[str, str | None]] = []
        for literal, name, _, _ in Formatter().parse(text):
            if name is not None and name in static:
                pieces.append((literal + escape(static[name]), None))
            else:
                pieces.append((literal, name))
        self._pieces = tuple(pieces)
        self.event_fields = self.fields - static.keys()
        # Only event_type: known from the event's type, no body parsing.
        self.needs_body = bool(self.event_fields - {"event_type"})
        self._body_fields = tuple(sorted(self.event_fields - {"event_type"}))
        self._by_type: dict[str, str] = {}
        self._by_values: dict[tuple[object, ...], str] = {}

    def render(self, event: Event) -> str:
        if not self.needs_body:
            text = self._by_type.get(event.type)
            if text is None:
                text = self._by_type[event.type] = self.fill(event.type, {})
            return text
        return self.render_fields(event.type, event.fields())

    def render_fields(self, kind: str, fields: Mapping[str, Any]) -> str:
        """Filled from ``fields`` (a body's), the event type being ``kind``."""
        values = [fields.get(name) for name in self._body_fields]
        for value in values:
            if value is not None and type(value) is not str:  # 1 == True, lists: not cached
                return self.fill(kind, fields)
        key = (kind, *values)
        text = self._by_values.get(key)
        if text is not None:
            return text
        if len(self._by_values) >= MAX_CACHED:
            self._by_values.clear()
        text = self._by_values[key] = self.fill(kind, fields)
        return text

    def fill(self, kind: str, fields: Mapping[str, Any]) -> str:
        escape = self._escape
        out = []
        for literal, name in self._pieces:
            out.append(literal)
            if name is not None:
                out.append(escape(kind if name == "event_type" else _str(fields.get(name))))
        return "".join(out)
