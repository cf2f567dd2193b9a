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

from eventsinkd.events import Event
from eventsinkd.state.deadletters import DeadLetter, DeadLetterStore
from eventsinkd.transports.contract import Attempt, Outcome

Send = Callable[[Event], Awaitable[Attempt]]
# Runs a DeadLetterStore method (in the daemon: on the store's own thread).
RunInStore = Callable[..., Awaitable[Any]]


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
