"""eventsinkd's own state failing: a damaged dead-letter store, a full state volume, a
read-only state directory. Each is a /status problem, fails /readyz and `health --ready`,
counts in eventsinkd_state_errors_total and logs a few lines, not one per event; nothing
is lost once the state can be written again.

Real parts throughout: an `eventsinkd run` subprocess, a receiver on 127.0.0.1, the CLI as
subprocesses, SQLite files damaged by overwriting their bytes, and real mounts (a 2 MB
tmpfs as the state volume, grown with `mount -o remount`; a read-only bind mount). The
mounts need root (the tests run as root, on CI too): elsewhere they skip, on CI they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from daemon_harness import (
    Daemon,
    eventsinkd,
    metric_value,
    received_all,
    sink_status,
    status,
    until,
    until_metric,
    until_status,
    wait_cursor_at_end,
    webhook_ids,
)

from eventsinkd.devtools.child import DaemonDir
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.state.deadletters import _SCHEMA, DB_FILE, DeadLetter, DeadLetterStore
from eventsinkd.wal.position import describe

PAGE = 4096


def mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if res.returncode == 0:
        return
    why = f"mount {' '.join(args)} failed: {res.stderr.strip()}"
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI runs as root: mounts must work)")
    pytest.skip(f"{why}; these tests need root (they run on CI)")


@contextmanager
def mounted(path: Path, *args: str) -> Iterator[Path]:
    """``mount ARGS path`` for the test's duration (lazily unmounted even if still in use)."""
    path.mkdir(parents=True, exist_ok=True)
    mount(*args, str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def configure(d: Daemon, sinks: list[dict[str, Any]], **top: Any) -> None:
    """The harness's config (block mode) with top-level keys added (e.g. ``dead_letters``)."""
    DaemonDir.write_config(
        d,
        sinks,
        wal={"start_at": "beginning", "poll_interval_s": 0.1},
        events={"retry_backoff_seconds": [0.1], "shutdown_timeout_s": 5, "overflow": "block"},
        state_save_interval_s=0.2,
        log={"level": "info", "format": "json"},
        **top,
    )


def refusing(refused: set[str]) -> Callable[[int, web.Request], Any]:
    """A receiver's answer: 422 for the webhook-ids in ``refused`` (read live), else 200."""

    async def answer(_n: int, req: web.Request) -> web.StreamResponse:
        return web.Response(status=422 if req.headers["webhook-id"] in refused else 200)

    return answer


def error_lines(d: Daemon) -> list[str]:
    return [line for line in d.log.read_text().splitlines() if '"level":"error"' in line.lower()]


async def not_ready(d: Daemon) -> None:
    """/readyz answers 503 with the problems, and `health --ready` exits 1."""
    assert not await asyncio.to_thread(d.ready)
    res = await eventsinkd("health", "-c", d.config, "--ready")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "unhealthy" in res.stdout


def letter(sink: str, n: int, size: int = 1000) -> DeadLetter:
    return DeadLetter(
        sink=sink,
        webhook_id=f"memory_written:{n:032x}",
        event_type="memory_written",
        timestamp="2026-04-10T12:00:00.123456789Z",
        body=b'{"n":%d,"pad":"%s"}' % (n, b"x" * size),
        attempts=1,
        first_attempt=1_000.0,
        last_attempt=1_000.0,
        last_outcome="HTTP 422",
    )


def seed(state: Path, sink: str = "old", n: int = 300) -> list[DeadLetter]:
    made = [letter(sink, i) for i in range(n)]
    with closing(DeadLetterStore(state)) as store:
        store.add(made)
    return made


def damage(path: Path) -> None:
    """Overwrite the head of every page but the first two (schema, pointer map) with garbage."""
    size = path.stat().st_size
    assert size > 10 * PAGE, size
    with path.open("r+b") as fh:
        for offset in range(2 * PAGE, size, PAGE):
            fh.seek(offset)
            fh.write(b"\xa5" * 32)


def move_aside(db: Path) -> None:
    """What the daemon says to do with a damaged store: move it (and -wal, -shm) aside."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            shutil.move(f"{db}{suffix}", f"{db}.damaged{suffix}")


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# -- a damaged store --------------------------------------------------------------------------


async def test_a_damaged_store_stops_the_start_with_exit_3_and_what_to_do(
    new_daemon: Callable[..., Daemon],
) -> None:
    d = new_daemon([{"name": "s", "url": "http://127.0.0.1:9/hook"}])
    seed(d.state_dir)
    db = d.state_dir / DB_FILE
    damage(db)
    await d.start(wait=False)
    assert d.proc is not None
    assert await asyncio.wait_for(d.proc.wait(), 60) == 3
    log = d.log.read_text()
    assert f"the dead-letter store {db} is damaged" in log
    assert f"mv {db} {db}.damaged" in log  # what to do
    assert "Traceback" not in log


async def test_a_store_damaged_at_run_time_is_a_problem_and_nothing_is_lost(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    refused: set[str] = set()
    receiver.behaviour = refusing(refused)
    d = new_daemon([{"name": "s", "url": receiver.url}], overflow="block")
    seed(d.state_dir)
    db = d.state_dir / DB_FILE
    w = NexusWriter(d.wal)
    w.append(10)
    await d.start()
    await received_all(receiver, set(webhook_ids(w)))
    assert (await status(d))["problems"] == []

    damage(db)
    # Another process's write (page 1 only): the daemon's SQLite rereads the pages it holds.
    with closing(sqlite3.connect(db)) as other, other:
        other.execute("PRAGMA user_version = 7")
    w.append(10)
    later = set(webhook_ids(w)[10:])
    refused.update(later)
    doc = await until_status(
        d,
        lambda s: any("cannot store dead letters" in p for p in s["problems"]),
        what="the failing store as a problem",
    )
    problem = next(p for p in doc["problems"] if "cannot store dead letters" in p)
    assert "damaged" in problem and str(db) in problem
    await not_ready(d)
    await until_metric(d, "eventsinkd_state_errors_total", 1, kind="dead_letters")
    assert (await sink_status(d))["failed"] == 0  # none counted as kept
    assert await d.stop() == 0

    # What the problem says: move it aside and start again. The refused events were never
    # finished, so they are sent again, and now accepted.
    move_aside(db)
    refused.clear()
    seen = len(receiver.requests)
    await d.start()
    await until(lambda: set(receiver.ids[seen:]) >= later)
    assert await d.stop() == 0


async def test_a_store_of_an_older_version_is_converted_to_give_space_back(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    d = new_daemon([{"name": "s", "url": receiver.url}])
    d.state_dir.mkdir(parents=True)
    db = d.state_dir / DB_FILE
    with closing(sqlite3.connect(db)) as old:  # as the previous version made it
        old.execute("PRAGMA journal_mode=WAL")
        old.executescript(_SCHEMA)
    kept = seed(d.state_dir, n=50)
    with closing(sqlite3.connect(db)) as check:
        assert check.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    await d.start()
    assert f"dead-letter store {db} converted" in d.log.read_text()
    assert await d.stop() == 0
    with closing(sqlite3.connect(db)) as check:
        assert check.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    with closing(DeadLetterStore(d.state_dir)) as store:
        assert store.letters() == kept


# -- a full state volume ----------------------------------------------------------------------


async def test_a_full_volume_fails_cursor_saves_and_sigterm_says_what_is_on_disk(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    d = new_daemon([{"name": "s", "url": receiver.url}], overflow="block")
    with mounted(d.state_dir, "-t", "tmpfs", "-o", "size=2m", "tmpfs"):
        w = NexusWriter(d.wal)
        w.append(50)
        await d.start()
        await received_all(receiver, set(webhook_ids(w)))
        await wait_cursor_at_end(d, w)
        before = d.saved_cursor("s")
        errors_before = len(error_lines(d))

        filler = d.state_dir / "filler"
        with filler.open("wb", buffering=0) as fh:  # fill the volume to the last block
            try:
                while True:
                    fh.write(b"\0" * PAGE)
            except OSError:
                pass
        w.append(50)
        await received_all(receiver, set(webhook_ids(w)))
        doc = await until_status(
            d,
            lambda s: any("cannot save position" in p for p in s["problems"]),
            what="the unsaved cursor as a problem",
        )
        assert not doc["ready"]
        await not_ready(d)
        failures = await until_metric(d, "eventsinkd_state_errors_total", 10, kind="cursor")
        assert d.saved_cursor("s") == before  # nothing could be written
        # Logged once (and again at most once a minute), not once per attempt.
        assert len(error_lines(d)) - errors_before <= 2, (failures, error_lines(d))

        d.signal(signal.SIGTERM)
        assert d.proc is not None
        assert await asyncio.wait_for(d.proc.wait(), 30) == 1
        log = d.log.read_text()
        assert f"the cursor file holds {describe(before)}" in log
        assert (
            f"stopped at these positions: sink s at {describe(before)} (the positions on disk"
            in log
        )
        assert d.saved_cursor("s") == before

        filler.unlink()
        seen = len(receiver.requests)
        await d.start()
        await received_all(receiver, set(webhook_ids(w)))
        # Resumed from the position on disk: the second 50 again, nothing lost.
        await until(lambda: set(receiver.ids[seen:]) >= set(webhook_ids(w)[50:]))
        assert (await status(d))["problems"] == []
        assert await d.stop() == 0


async def test_dead_letters_on_a_full_volume_purge_and_recovery(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    refused: set[str] = set()
    answering = asyncio.Event()  # cleared: the receiver holds every request
    answering.set()

    async def answer(_n: int, req: web.Request) -> web.StreamResponse:
        await answering.wait()
        return web.Response(status=422 if req.headers["webhook-id"] in refused else 200)

    receiver.behaviour = answer
    sink = {"name": "s", "url": receiver.url, "content": "full", "timeout_seconds": 120}
    d = new_daemon([sink], overflow="block")
    configure(d, [sink])  # dead_letters.max_mb: the default 100 MB, more than the volume
    with mounted(d.state_dir, "-t", "tmpfs", "-o", "size=2m", "tmpfs"):
        w = NexusWriter(d.wal, payload_bytes=8000)
        w.append(400)
        ids = webhook_ids(w)
        refused.update(i for n, i in enumerate(ids) if n % 4)  # 300 of 400, ~2.5 MB of letters
        await d.start()
        assert "dead letters may take up to 100 MB" in d.log.read_text()  # the start's warning

        doc = await until_status(
            d,
            lambda s: any("cannot store dead letters" in p for p in s["problems"]),
            what="the full store as a problem",
        )
        assert any("the state volume is full" in p for p in doc["problems"])
        await not_ready(d)
        failures = await until_metric(d, "eventsinkd_state_errors_total", 20, kind="dead_letters")
        errors = error_lines(d)
        assert 1 <= len(errors) <= 6, (failures, errors)  # not one per event per retry

        # A restart on the full volume: it starts, and says so again.
        assert await d.stop() in (0, 1)  # 1 if its last cursor could not be saved
        await d.start(wait=False)
        await until_status_when_up(
            d, lambda s: any("cannot store dead letters" in p for p in s["problems"])
        )
        await not_ready(d)

        # Purge while the daemon runs. The receiver holds its answers meanwhile, so that the
        # daemon stores nothing: then the letters listed are exactly the letters purged.
        answering.clear()
        await quiet(d, "eventsinkd_state_errors_total", kind="dead_letters")
        listing = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
        assert listing.returncode == 0, listing.stderr  # reading needs no space
        listed = {json.loads(line)["webhook_id"] for line in listing.stdout.splitlines()}
        assert free_bytes(d.state_dir) < 128 * 1024
        purge = await eventsinkd("dead-letters", "purge", "-c", d.config)
        assert purge.returncode == 0, purge.stdout + purge.stderr
        assert purge.stdout == f"purged {len(listed)} dead letter(s)\n"
        assert listed and listed <= refused
        assert free_bytes(d.state_dir) > 1024 * 1024  # the space went back to the volume
        answering.set()

        mount("-o", "remount,size=64m", str(d.state_dir))
        await until_status(
            d,
            lambda s: (
                s["problems"] == []
                and s["lag"]["bytes_behind"] == 0
                and s["sinks"]["s"]["queue_depth"] == 0
            ),
            what="every refused event kept once the volume has room",
            timeout_s=120,
        )
        assert await asyncio.to_thread(d.ready)
        res = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
        held = {json.loads(line)["webhook_id"] for line in res.stdout.splitlines()}
        # Every refused event is a dead letter, or was one until the operator purged it
        # (some may be both: the restart read again events its cursor could not pass on
        # disk). Every other one was delivered.
        assert held <= refused and refused <= held | listed
        accepted = set(ids) - refused
        ok = {r.headers["webhook-id"] for r in receiver.requests} & accepted
        assert ok == accepted
        assert (await sink_status(d))["dropped"] == 0
        assert await d.stop() == 0


async def quiet(d: Daemon, name: str, **labels: str) -> None:
    """Wait until the sample ``name{labels}`` stays the same for 2 s running."""
    last = None
    for _ in range(30):
        value = metric_value(await d.get("/metrics"), name, **labels)
        if value == last:
            return
        last = value
        await asyncio.sleep(2)
    raise AssertionError(f"{name}{labels} still changing after a minute")


def test_purge_on_a_full_volume_gives_the_space_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with mounted(state, "-t", "tmpfs", "-o", "size=2m", "tmpfs"):
        with closing(DeadLetterStore(state)) as store:
            store.keep_reserve()
            n = 0
            with pytest.raises(sqlite3.OperationalError, match="full"):
                while True:  # what a daemon with refused events does, until the volume is full
                    store.add([letter("s", n + i, size=8000) for i in range(5)])
                    n += 5
            assert free_bytes(state) < 64 * 1024
            # Its journal stayed small: the letters took the volume, not the -wal file.
            assert (state / f"{DB_FILE}-wal").stat().st_size < 128 * 1024
            assert n * 8000 > 1024 * 1024
        with closing(DeadLetterStore(state)) as store:  # as `dead-letters purge` opens it
            assert store.purge() == n
            assert store.letters() == []
        assert free_bytes(state) > 1536 * 1024  # the space went back to the volume
        assert (state / DB_FILE).stat().st_size < 128 * 1024
        assert (state / "dead-letters.reserve").stat().st_size == 256 * 1024  # made again


# -- a read-only state directory --------------------------------------------------------------


async def test_a_read_only_state_directory_is_a_problem_and_list_still_works(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    d = new_daemon([{"name": "s", "url": receiver.url}], overflow="block")
    kept = seed(d.state_dir, sink="s", n=5)
    w = NexusWriter(d.wal)
    w.append(20)
    with mounted(d.state_dir, "--bind", str(d.state_dir)):
        mount("-o", "remount,ro,bind", str(d.state_dir))
        res = await eventsinkd("dead-letters", "list", "-c", d.config)  # no daemon
        assert res.returncode == 0, res.stderr
        assert res.stdout.endswith(f"{len(kept)} dead letter(s)\n")

        await d.start(wait=False)
        doc = await until_status_when_up(
            d, lambda s: any("is read-only" in p for p in s["problems"])
        )
        assert not doc["ready"]
        await received_all(receiver, set(webhook_ids(w)))  # delivery goes on meanwhile
        await not_ready(d)
        res = await eventsinkd("status", "-c", d.config)
        assert res.returncode == 0, res.stderr
        assert "is read-only" in res.stdout
        res = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
        assert res.returncode == 0, res.stderr
        assert {json.loads(x)["webhook_id"] for x in res.stdout.splitlines()} == {
            x.webhook_id for x in kept
        }
        assert await d.stop() == 1  # its final cursor could not be saved
        assert "the cursor file holds nothing" in d.log.read_text()
    # Writable again: it starts ready and sends the 20 again (nothing was saved).
    seen = len(receiver.requests)
    await d.start()
    await until(lambda: set(receiver.ids[seen:]) >= set(webhook_ids(w)))
    assert (await status(d))["problems"] == []
    assert await d.stop() == 0


async def until_status_when_up(
    d: Daemon, cond: Callable[[dict[str, Any]], bool], timeout_s: float = 60
) -> dict[str, Any]:
    """Like until_status, for a daemon that is not ready: waits for its admin server first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        assert d.proc is not None and d.proc.returncode is None, d.log.read_text()
        try:
            doc = await status(d)
        except OSError:
            doc = {}
        if doc and cond(doc):
            return doc
        assert loop.time() < deadline, f"not within {timeout_s}s; last /status: {doc}"
        await asyncio.sleep(0.1)
