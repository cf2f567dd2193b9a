"""``eventsinkd tail``: print the events the daemon would send (``--types``), one body per line;
with ``--sink NAME`` what that sink would send (:mod:`eventsinkd.cli.preview`).

With status events, the PENDING entries are followed as a sink's cursor follows them,
and saved with the position in ``--state-dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from eventsinkd.events import (
    MEMORY_WRITTEN,
    ContentMode,
    event_body,
    event_type,
    status_event_type,
)
from eventsinkd.state.cursors import in_wal, load_saved
from eventsinkd.state.positions import Checkpointer, PositionStore
from eventsinkd.wal.batches import Batch
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import StartAt
from eventsinkd.wal.statuses import StatusWatch

PENDING_LIMIT = 100_000  # as events.pending_limit's default

# An event's line (kind, entry) -> bytes, or None for no line.
Render = Callable[[str, Entry], bytes | None]


async def tail(
    wal_dir: Path,
    parser: LineParser,
    *,
    start_at: StartAt,
    follow: bool,
    content: ContentMode,
    types: frozenset[str] = frozenset({MEMORY_WRITTEN}),
    state_dir: Path | None,
    poll_interval_s: float,
    force_polling: bool,
    out: BinaryIO,
    render: Render | None = None,
) -> int:
    if render is None:

        def render(kind: str, entry: Entry) -> bytes | None:
            return event_body(entry, content, kind) + b"\n"

    store = PositionStore(state_dir, wal_dir) if state_dir is not None else None
    start: Position | StartAt = start_at
    if store is not None:
        saved = load_saved(store, f"starting at the {start_at}", _warn, in_wal(wal_dir))
        if saved is not None:
            start = saved
    checkpoints = Checkpointer(store)
    watch = None
    if types - {MEMORY_WRITTEN}:
        watch = checkpoints.statuses = StatusWatch(lambda _entry: True, PENDING_LIMIT)
        if store is not None and store.statuses is not None:
            try:
                watch.restore(store.statuses)
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                _warn(f"{store.path}: the PENDING entries saved there cannot be used ({exc})")
    follower = WalFollower(
        wal_dir,
        parser,
        start,
        follow=follow,
        poll_interval_s=poll_interval_s,
        force_polling=force_polling,
        statuses=watch,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, follower.stop)
    saver = asyncio.create_task(checkpoints.run())
    try:
        async for batch in follower:
            lines = _lines(batch, types, render)
            if lines:
                out.write(b"".join(lines))
                out.flush()
            # Printed and flushed: the position may move past these lines.
            checkpoints.ack(batch.end)
            if watch is not None:
                for change in batch.statuses:
                    watch.finished(change)
    finally:
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        checkpoints.flush()
    if not follow and follower.scanner.error is not None:
        print(f"eventsinkd: {follower.scanner.error}", file=sys.stderr)
        return 1
    return 0


def _lines(batch: Batch, types: frozenset[str], render: Render) -> list[bytes]:
    lines = []
    if MEMORY_WRITTEN in types:
        for rec in batch.records:
            kind = event_type(rec.entry)
            if kind is not None and (line := render(kind, rec.entry)) is not None:
                lines.append(line)
    for change in batch.statuses:
        kind = status_event_type(change.entry)
        if kind is not None and kind in types and (line := render(kind, change.entry)) is not None:
            lines.append(line)
    return lines


def _warn(problem: str) -> None:
    print(f"eventsinkd: {problem}", file=sys.stderr)
