"""A sink's ``transform``: a jq program (libjq, through the ``jq`` package) that turns each
event's body into the body the receiver wants.

The program gets the event's body (the JSON object of shared/spec/events.md) as its input
and these variables:

* ``$webhook_id``: the event's id (``<event_type>:<payload_id>``);
* ``$event_type``: ``memory_written``, ``memory_persisted`` or ``memory_write_failed``;
* ``$wal_time``: the entry's WAL time in Unix seconds (a number with its fraction), or
  ``null`` if the entry has none;
* ``$sink``: the sink's name.

It must give one JSON object (the new body); ``empty`` or ``null`` means "do not send this
event" (:data:`FILTERED`). Anything else - several results, a string, a run-time error -
is a :class:`TransformError` carrying jq's message. libjq has no time limit: a program must
end (one that loops for ever without output would hold the daemon's event loop; try a
program with ``eventsinkd tail --sink`` first). One that generates without end is refused
at its second result.

The per-event variables reach the program through its input, not by compiling it again
for every event (libjq binds ``--arg`` values when it compiles): the program runs as
``.[1] as $webhook_id | ... | .[0] | (PROGRAM)`` over ``[body, id, type, time, sink]``;
a program without a ``$`` gets the body alone.
"""

from __future__ import annotations

from typing import Any, Final

import jq
import orjson

from eventsinkd.events import go_json

VARIABLES = ("webhook_id", "event_type", "wal_time", "sink")
FILTERED: Final = None  # what :meth:`Transform.apply` gives for an event not to be sent
_NOTHING: Final = object()


class TransformError(Exception):
    """The program failed on one event (jq's message), or gave something not one object."""


def compile_error(program: str) -> str | None:
    """jq's message (its first line) if ``program`` does not compile, else None."""
    try:
        # Compiled alone (its own line numbers in messages), its variables declared.
        jq.compile(program, args=dict.fromkeys(VARIABLES))
    except ValueError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[0].rstrip(":") if lines else "does not compile"
    return None


class Transform:
    """A compiled program, run on one event's body at a time."""

    def __init__(self, program: str, sink: str = "") -> None:
        problem = compile_error(program)
        if problem is not None:
            raise ValueError(problem)
        self.program = program
        # A program that names no variable gets the body alone: a third less per event.
        self._plain = "$" not in program
        if self._plain:
            self._jq = jq.compile(program)
        else:
            binds = " | ".join(f".[{i + 1}] as ${name}" for i, name in enumerate(VARIABLES))
            # Newlines around the program: a trailing comment in it must not swallow the ")".
            self._jq = jq.compile(f"{binds} | .[0] | (\n{program}\n)")
        self._tail = b"," + orjson.dumps(sink) + b"]"

    def apply(
        self, body: bytes, webhook_id: str, kind: str, wal_time: float | None
    ) -> bytes | None:
        """The new body, or :data:`FILTERED`; raises :class:`TransformError`."""
        if self._plain:
            text = body
        else:
            text = b"".join(
                (
                    b"[",
                    body,
                    b",",
                    orjson.dumps(webhook_id),
                    b",",
                    orjson.dumps(kind),
                    b",",
                    orjson.dumps(wal_time),
                    self._tail,
                )
            )
        # At most two results are asked for: a program that generates without end
        # (repeat, range(1e9)) is told apart from one object without running it out.
        try:
            results = iter(self._jq.input_text(text.decode()))
            result: Any = next(results, _NOTHING)
            if result is _NOTHING:
                return FILTERED
            if next(results, _NOTHING) is not _NOTHING:
                raise TransformError(
                    "the transform gave more than one result; it must give one object "
                    "(or empty or null, not to send the event)"
                )
        except ValueError as exc:
            raise TransformError(f"jq: {exc}") from None
        if result is None:
            return FILTERED
        if not isinstance(result, dict):
            raise TransformError(
                f"the transform gave {_kind(result)}, not an object (give an object, "
                "or empty or null not to send the event)"
            )
        return go_json(result)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
