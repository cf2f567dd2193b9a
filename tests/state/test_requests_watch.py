"""The daemon looks at the requests `rewind` and `dead-letters replay` leave when they land,
not on a timer (issue 25). Real files and the real inotify watch; the intervals are the
module's own, far longer than the waits here, so what is served in time was woken by the
watch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from eventsinkd.daemon import requests as requests_module
from eventsinkd.daemon.requests import REQUESTS_CHECK_S, Requests
from eventsinkd.state.control import request_replay

SERVED_WITHIN_S = 5.0  # generous for a loaded machine, and half of REQUESTS_CHECK_S


async def until(cond: Callable[[], bool], what: str, timeout_s: float = SERVED_WITHIN_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(state_dir: Path) -> AsyncIterator[tuple[Requests, list[float]]]:
    """:class:`Requests` running on ``state_dir``, and when it looked (loop time)."""
    served: list[float] = []

    async def serve() -> None:
        served.append(asyncio.get_running_loop().time())

    requests = Requests(state_dir, serve)
    task = asyncio.create_task(requests.run())
    try:
        yield requests, served
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_request_is_served_when_it_lands_and_nothing_is_looked_at_meanwhile(
    tmp_path: Path,
) -> None:
    assert REQUESTS_CHECK_S >= 2 * SERVED_WITHIN_S
    async with running(tmp_path) as (requests, served):
        await until(lambda: requests.watched, "the watch")
        await until(lambda: len(served) >= 1, "the look at start")
        await asyncio.sleep(1.0)
        quiet = len(served)
        assert quiet <= 2  # at start, and once more if the watch came after the first look
        await asyncio.sleep(1.0)
        assert len(served) == quiet  # nothing ticks while nothing lands
        request_replay(tmp_path)  # as `dead-letters replay` leaves it for a running daemon
        await until(lambda: len(served) > quiet, "the look after the request")


async def test_without_a_watch_requests_are_looked_for_every_half_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where inotify is not there (not Linux), the old timer: a command's request is still
    served, within REQUESTS_EVERY_S."""
    monkeypatch.setattr(requests_module.inotify, "AVAILABLE", False)
    async with running(tmp_path) as (requests, served):
        await until(lambda: len(served) >= 3, "three looks")
        assert not requests.watched
