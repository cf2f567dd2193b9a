"""A NATS sink's ``subject`` template: rendering it per event, and what a stream must take."""

from __future__ import annotations

import re
from string import Formatter
from typing import Any

from eventsinkd.events import MEMORY_WRITTEN, Event

MAX_CACHED_SUBJECTS = 4096  # rendered subjects kept, for templates with body fields
_BAD_TOKEN_CHARS = re.compile(r"[.*>\s\x00-\x1f\x7f]")
_PLACEHOLDER = "\x00"


def subject_token(value: object) -> str:
    """``value`` as one valid subject token: '.', '*', '>', whitespace -> '_'; empty -> '_'."""
    text = "" if value is None else str(value)
    return _BAD_TOKEN_CHARS.sub("_", text) or "_"


class SubjectTemplate:
    """The sink's ``subject`` template and what can be known about it before any event."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.fields = {f for _, f, _, _ in Formatter().parse(template) if f}
        # Only event_type: the subject is known from the event's type, no body parsing.
        self.needs_body = bool(self.fields - {"event_type"})
        self._body_fields = tuple(sorted(self.fields - {"event_type"}))
        self._by_type: dict[str, str] = {}
        self._by_values: dict[tuple[object, ...], str] = {}  # (type, field values) -> subject
        rendered = template.format(
            **{**dict.fromkeys(self.fields, _PLACEHOLDER), "event_type": MEMORY_WRITTEN}
        )
        tokens = rendered.split(".")
        # What a stream must take: the subject itself, or (fields in it) its pattern.
        self.probe = ".".join("*" if _PLACEHOLDER in t else t for t in tokens)
        static: list[str] = []
        for token in template.split("."):
            if "{" in token:
                break
            static.append(token)
        # A subjects filter to suggest for a new stream.
        self.suggestion = ".".join([*static, ">"]) if len(static) < len(tokens) else rendered

    def render(self, event: Event) -> str:
        if not self.needs_body:
            subject = self._by_type.get(event.type)
            if subject is None:
                subject = self._by_type[event.type] = self.template.format(
                    event_type=subject_token(event.type)
                )
            return subject
        fields = event.fields()
        # The fields a subject may use (source, actor...) take few values: each set is made
        # into a subject once (the cache emptied when full), not once per event.
        values = [fields.get(name) for name in self._body_fields]
        for value in values:
            if value is not None and type(value) is not str:  # 1 == True, lists: not cached
                return self._format(event.type, fields)
        key = (event.type, *values)
        subject = self._by_values.get(key)
        if subject is not None:
            return subject
        if len(self._by_values) >= MAX_CACHED_SUBJECTS:
            self._by_values.clear()
        subject = self._by_values[key] = self._format(event.type, fields)
        return subject

    def _format(self, kind: str, fields: dict[str, Any]) -> str:
        values = {name: subject_token(fields.get(name)) for name in self._body_fields}
        return self.template.format(**values, event_type=subject_token(kind))
