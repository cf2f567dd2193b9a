"""Re-sending dead letters: one attempt each, through the sink's current config and signing.

A letter that gets through leaves the store; one that does not stays, with its
attempt count and last outcome updated. Used by the running daemon (for
requests left by ``dead-letters replay``) and by that command itself when no
daemon runs (see :mod:`eventsinkd.state.control`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from eventsinkd.events import ContentMode, Event
from eventsinkd.events.transform import Transform, TransformError
from eventsinkd.state.deadletters import DeadLetter, DeadLetterStore
from eventsinkd.transports.contract import Attempt, Outcome

Send = Callable[[Event], Awaitable[Attempt]]
# Runs a DeadLetterStore method (in the daemon: on the store's own thread).
RunInStore = Callable[..., Awaitable[Any]]


def apply_transform(transform: Transform, content: ContentMode, event: Event) -> bytes | str | None:
    """``event``'s body through a sink's transform: the new body, None (filtered) or why the
    program failed on it (never raises)."""
    try:
        return transform.apply(event.original_body(content), event.id, event.type, event.wal_time)
    except TransformError as exc:
        return str(exc)
    except Exception as exc:  # libjq's binding may raise more than it says
        return f"the transform failed: {type(exc).__name__}: {exc}"


def shape_for_replay(
    transform: Transform | None, content: ContentMode, event: Event
) -> Attempt | None:
    """A dead letter's event through its sink's current transform: None when it is to be sent
    (its shaped body set), else what the replay counts: a failure of the program, or
    delivered for an event the program now filters out (nothing to send)."""
    if transform is None:
        return None
    shaped = apply_transform(transform, content, event)
    if isinstance(shaped, str):
        return Attempt(Outcome.PERMANENT, None, shaped)
    if shaped is None:
        return Attempt(Outcome.DELIVERED, None, "the transform filters it out: not sent")
    event.shaped = shaped
    return None


@dataclass
class ReplayResult:
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (webhook-id, why)


async def replay(
    letters: list[DeadLetter],
    send_for: Callable[[str], Send | None],
    store: DeadLetterStore,
    run: RunInStore,
) -> ReplayResult:
    result = ReplayResult()
    for letter in letters:
        send = send_for(letter.sink)
        if send is None:
            detail = f"sink {letter.sink} is not configured"
        else:
            event = Event.stored(
                letter.event_type, letter.webhook_id, letter.timestamp, letter.body
            )
            attempt = await send(event)
            if attempt.outcome is Outcome.DELIVERED:
                await run(store.delivered, letter.sink, letter.webhook_id)
                result.delivered.append(letter.webhook_id)
                continue
            detail = attempt.detail
        await run(store.failed_again, letter.sink, letter.webhook_id, detail)
        result.failed.append((letter.webhook_id, detail))
    return result
