"""A NATS sink's ``subject`` template: rendering it per event (the shared engine of
:mod:`eventsinkd.events.templates`, each value made one subject token), and what a stream
must take."""

from __future__ import annotations

import re

from eventsinkd.events import MEMORY_WRITTEN, Event
from eventsinkd.events.templates import MAX_CACHED, Template

MAX_CACHED_SUBJECTS = MAX_CACHED  # rendered subjects kept, for templates with body fields
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
        self._template = Template(template, subject_token)
        self.fields = self._template.fields
        self.needs_body = self._template.needs_body
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
        return self._template.render(event)
