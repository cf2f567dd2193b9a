"""``eventsinkd tail``: print the memory_written events the daemon would send."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import BinaryIO

from eventsinkd.events import ContentMode, event_body, event_type
from eventsinkd.state.cursors import load_saved
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Checkpointer, Position, PositionStore
from eventsinkd.wal.scanner import StartAt


async def tail(
    wal_dir: Path,
    parser: LineParser,
    *,
    start_at: StartAt,
    follow: bool,
    content: ContentMode,
    state_dir: Path | None,
    poll_interval_s: float,
    force_polling: bool,
    out: BinaryIO,
) -> int:
    store = PositionStore(state_dir, wal_dir) if state_dir is not None else None
    start: Position | StartAt = start_at
    if store is not None:
        saved = load_saved(store, f"starting at the {start_at}", _warn)
        if saved is not None:
            start = saved
    follower = WalFollower(
        wal_dir,
        parser,
        start,
        follow=follow,
        poll_interval_s=poll_interval_s,
        force_polling=force_polling,
    )
    checkpoints = Checkpointer(store)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, follower.stop)
    saver = asyncio.create_task(checkpoints.run())
    try:
        async for batch in follower:
            lines = [
                event_body(rec.entry, content) + b"\n"
                for rec in batch.records
                if event_type(rec.entry) is not None
            ]
            if lines:
                out.write(b"".join(lines))
                out.flush()
            # Printed and flushed: the position may move past these lines.
            checkpoints.ack(batch.end)
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


def _warn(problem: str) -> None:
    print(f"eventsinkd: {problem}", file=sys.stderr)
