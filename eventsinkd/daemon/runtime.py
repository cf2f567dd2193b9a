"""How the daemon's process runs: its event loop and its garbage collector's settings."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

# A young generation this large is collected about once per 10,000 objects left alive,
# instead of once per 700 (CPython's default).
GC_YOUNG_THRESHOLD = 10_000


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon on uvloop where it is installed: about 10% less CPU per delivered event
    (BENCHMARKS.md); the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never re-scan what startup made.

    Each event allocates a few dozen short-lived objects (the event, its job, a future
    per request...), almost all freed by reference counting. At CPython's defaults the
    collector still ran about 8 times per 1,000 delivered events, and its full
    collections walked every module, class and function loaded at startup: about 5 % of
    the daemon's CPU at full speed. What startup made lives as long as the process, so it
    is frozen out of collection; the young generation is larger, so the collector runs
    about once per 1,000 events. Garbage in cycles still goes, a little later.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
