"""The watch wakes the readers when Nexus writes, and only then (issue 25).

Real files and the real watchers. The poll interval is set far longer than any wait
here, so what arrives in time was brought by the watch, not by the timer. The one
stand-in is a deaf inotify descriptor (:class:`DeafINotify`): a filesystem whose
changes are not reported (NFS written from another host) cannot be made here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest
from inotify_simple import INotify as RealINotify
from test_follower import Reader, expected_ids, ids
from test_wal_directory import until

from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.wal import inotify as inotify_module
from eventsinkd.wal import watch as watch_module
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.watch import Backend

LONG_POLL_S = 60.0  # longer than every wait below: only the watch can bring what arrives
ARRIVAL_S = 10.0  # generous for a loaded machine; the figure is in `python -m bench.cost`


def count_steps(follower: WalFollower) -> list[int]:
    """A counter of the follower's steps (its reads), kept in a one-item list."""
    steps = [0]
    step = follower._step

    def counted() -> object:
        steps[0] += 1
        return step()

    follower._step = counted  # type: ignore[method-assign,assignment]
    return steps


@pytest.mark.parametrize(
    ("backend", "start"),
    [("inotify", "empty"), ("inotify", "missing"), ("watchfiles", "empty")],
)
async def test_the_first_segment_is_read_when_it_is_written(
    tmp_path: Path, backend: Backend, start: str
) -> None:
    """Started on an empty (or missing) WAL directory: the first entries of the first segment
    are read as they are written, not at the next poll (inotify watches the parent of a
    missing directory for its creation)."""
    wal_dir = tmp_path / "wal"
    if start == "empty":
        wal_dir.mkdir()
    reader = Reader(wal_dir, poll_interval_s=LONG_POLL_S)
    reader.follower.waker.backend = backend
    if start == "empty":
        await until(lambda: reader.follower.waker.watching, "the watch")
    else:
        await until(lambda: "does not exist" in (reader.follower.scanner.error or ""), "a look")
    await asyncio.sleep(0.2)  # idle a while: nothing pending when the writer comes
    w = NexusWriter(wal_dir, precreate=False, seed=1)
    w.append(1)
    assert await reader.wait_for(1, timeout_s=ARRIVAL_S) == expected_ids(w)
    w.append(5)
    assert await reader.wait_for(6, timeout_s=ARRIVAL_S) == expected_ids(w)
    await reader.close()


async def test_an_idle_watched_directory_costs_no_reads(wal_dir: Path) -> None:
    """While nothing is written the reader does not look (no timer ticks); a write is read
    at once, with one look or two."""
    w = NexusWriter(wal_dir, precreate=False, seed=2)
    w.append(3)
    reader = Reader(wal_dir, poll_interval_s=0.05)  # the watch's check is not this
    await until(lambda: reader.follower.waker.watching, "the watch")
    await reader.wait_for(3)
    await asyncio.sleep(0.3)
    steps = count_steps(reader.follower)
    await asyncio.sleep(1.0)
    assert steps[0] == 0
    w.append(1)
    await reader.wait_for(4, timeout_s=ARRIVAL_S)
    await asyncio.sleep(0.3)
    assert 1 <= steps[0] <= 3
    await reader.close()


class DeafINotify(RealINotify):  # type: ignore[misc]
    """The real descriptor, whose reads report nothing while ``deaf``: a filesystem whose
    changes inotify does not see."""

    deaf = False

    def read(self, *args: object, **kw: object) -> object:
        events = super().read(*args, **kw)
        return [] if DeafINotify.deaf else events


async def test_a_watch_that_misses_a_change_is_not_trusted_any_more(
    wal_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The check behind a live watch finds data no change was reported for: a warning (once)
    says so and what to set, and from then on the readers look every poll interval."""
    caplog.set_level(logging.WARNING, logger=watch_module.__name__)
    monkeypatch.setattr(inotify_module, "INotify", DeafINotify)
    monkeypatch.setattr(DeafINotify, "deaf", False)
    monkeypatch.setattr(watch_module, "WATCHED_CHECK_S", 0.5)
    w = NexusWriter(wal_dir, precreate=False, seed=3)
    w.append(2)
    reader = Reader(wal_dir, poll_interval_s=0.05)
    waker = reader.follower.waker
    await until(lambda: waker.watching, "the watch")
    await reader.wait_for(2)
    DeafINotify.deaf = True
    w.append(3)
    await reader.wait_for(5, timeout_s=ARRIVAL_S)  # found by the check
    assert not waker.trusted and waker.watching
    assert not reader.follower.reading.directory.watched
    for n in range(6, 10):  # found at the poll interval, in a new segment too
        if n == 8:
            w._rotate()
        w.append(1)
        await reader.wait_for(n, timeout_s=ARRIVAL_S)
    warnings = [r.getMessage() for r in caplog.records if "missed a change" in r.getMessage()]
    assert len(warnings) == 1 and "wal.force_polling: true" in warnings[0]
    await reader.close()
    assert ids(reader.records) == expected_ids(w)


@pytest.mark.parametrize("change", ["removed", "replaced by an empty file"])
async def test_changes_that_bring_no_data_still_wake_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """What the reader must see although no line is added: the WAL directory removed while
    the reader holds its segment open (inotify reports the directory's own removal only once
    that file is closed), and the segment replaced by an empty file (a rename: a rewrite).
    The check behind the watch is put off for a minute: the watch must do it."""
    monkeypatch.setattr(watch_module, "WATCHED_CHECK_S", LONG_POLL_S)
    wal_dir = tmp_path / "wal"
    w = NexusWriter(wal_dir, precreate=False, seed=4)
    w.append(3)
    reader = Reader(wal_dir, poll_interval_s=0.05)
    follower = reader.follower
    await until(lambda: follower.waker.watching, "the watch")
    await reader.wait_for(3)
    await asyncio.sleep(0.2)
    if change == "removed":
        shutil.rmtree(wal_dir)
        await until(
            lambda: "does not exist" in (follower.scanner.error or ""), "the error", ARRIVAL_S
        )
    else:
        empty = tmp_path / "empty"
        empty.touch()
        os.rename(empty, wal_dir / w.active_segment)
        stats = follower.scanner.stats
        await until(lambda: stats.rewrites + stats.truncations >= 1, "the rewrite", ARRIVAL_S)
    await reader.close()
