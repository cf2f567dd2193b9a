"""The operator's commands on the state directory: dead letters and rewinding a cursor.

Each works whether the daemon runs or not; :mod:`eventsinkd.state.control`
says how the two never act on the same letter or cursor at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson

from eventsinkd.config.model import Config
from eventsinkd.config.sinks import SinkConfig
from eventsinkd.delivery.replay import ReplayResult, Send, replay, shape_for_replay
from eventsinkd.delivery.rewinds import NOT_SAVED, plan, saved_start
from eventsinkd.events import Event
from eventsinkd.state.control import StateLock, request_replay, request_rewind, take_answer
from eventsinkd.state.cursors import in_wal
from eventsinkd.state.deadletters import DeadLetter, DeadLetterStore
from eventsinkd.state.positions import PositionFileError, PositionStore, cursor_file
from eventsinkd.transports import make_transport
from eventsinkd.transports.contract import Attempt
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position, describe
from eventsinkd.wal.seek import Time, parse_target, position_before

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DAEMON_SILENT_S = 60.0  # a running daemon that makes no progress on a request for this long
TO_FORMS = (
    "beginning, an RFC 3339 time (2026-04-10T12:00:00Z, or with an offset like +02:00), "
    "or the payload_id of a memory entry"
)


class UsageError(Exception):
    """A bad argument: exit 2 with this message."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_sink(cfg: Config, sink: str | None) -> None:
    names = [s.name for s in cfg.events.sinks]
    if sink is not None and sink not in names:
        raise UsageError(f"no sink named {sink!r} in the config (sinks: {', '.join(names) or '-'})")


def parse_time(value: str) -> float:
    """Unix seconds of an RFC 3339 time given on the command line."""
    target = parse_target(value)
    if not isinstance(target, Time):
        raise UsageError(f"{value!r} is not an RFC 3339 time, e.g. 2026-04-10T12:00:00Z")
    return target.seconds


# -- dead letters ------------------------------------------------------------------------


def list_letters(cfg: Config, sink: str | None, as_json: bool, out: TextIO) -> int:
    store = DeadLetterStore(cfg.state_dir, read_only=True)  # works on a read-only state dir
    try:
        letters = store.letters(sink)
    finally:
        store.close()
    if as_json:
        for x in letters:
            doc = {
                "sink": x.sink,
                "webhook_id": x.webhook_id,
                "event_type": x.event_type,
                "attempts": x.attempts,
                "first_attempt": _iso(x.first_attempt),
                "last_attempt": _iso(x.last_attempt),
                "last_outcome": x.last_outcome,
                "replay_requested": x.replay,
                "event": orjson.loads(x.body),
            }
            out.write(orjson.dumps(doc).decode() + "\n")
        return EXIT_OK
    for x in letters:
        out.write(
            f"{x.sink}\t{x.webhook_id}\t{x.attempts} attempt(s)\tlast {_iso(x.last_attempt)}"
            f"\t{x.last_outcome}\n"
        )
    out.write(f"{len(letters)} dead letter(s)\n")
    return EXIT_OK


def purge_letters(cfg: Config, sink: str | None, before: float | None, out: TextIO) -> int:
    store = DeadLetterStore(cfg.state_dir)
    try:
        n = store.purge(sink, before)
    finally:
        store.close()
    out.write(f"purged {n} dead letter(s)\n")
    return EXIT_OK


def replay_letters(cfg: Config, sink: str | None, ids: list[str] | None, out: TextIO) -> int:
    _check_sink(cfg, sink)
    store = DeadLetterStore(cfg.state_dir)
    lock = StateLock(cfg.state_dir)
    try:
        if lock.acquire("eventsinkd dead-letters replay"):
            letters = [x for x in store.letters(sink) if ids is None or x.webhook_id in ids]
            result = asyncio.run(_replay_here(cfg, store, letters))
        else:
            out.write(f"the daemon runs ({lock.holder()}): it sends them\n")
            result = _replay_by_daemon(cfg.state_dir, store, sink, ids)
    finally:
        lock.release()
        store.close()
    missing = sorted(set(ids or ()) - set(result.delivered) - {i for i, _ in result.failed})
    for webhook_id in missing:
        result.failed.append((webhook_id, "no such dead letter"))
    for webhook_id, why in result.failed:
        out.write(f"failed: {webhook_id}: {why}\n")
    out.write(
        f"replayed {len(result.delivered) + len(result.failed)} dead letter(s): "
        f"{len(result.delivered)} delivered, {len(result.failed)} failed (kept)\n"
    )
    return EXIT_FAILED if result.failed else EXIT_OK


async def _replay_here(
    cfg: Config, store: DeadLetterStore, letters: list[DeadLetter]
) -> ReplayResult:
    transports = {s.name: make_transport(s) for s in cfg.events.sinks}
    for transport in transports.values():
        await transport.open()

    sinks = {s.name: s for s in cfg.events.sinks}

    def send_for(name: str) -> Send | None:
        if name not in transports:
            return None
        transport, sink = transports[name], sinks[name]

        async def send_one(event: Event) -> Attempt:
            done = shape_for_replay(sink.transformer, sink.content, event)
            if done is not None:
                return done
            return (await transport.send([event]))[0]

        return send_one

    async def run_sync(fn: object, *args: object) -> object:
        return fn(*args)  # type: ignore[operator]

    try:
        return await replay(
            letters,
            send_for,
            store,
            run_sync,
        )
    finally:
        for transport in transports.values():
            await transport.close()


def _replay_by_daemon(
    state_dir: Path, store: DeadLetterStore, sink: str | None, ids: list[str] | None
) -> ReplayResult:
    asked = [(x.sink, x.webhook_id) for x in store.request_replay(sink, ids)]
    with contextlib.suppress(OSError):  # unwoken, the daemon looks within seconds all the same
        request_replay(state_dir)
    last_change, waiting = time.monotonic(), len(asked)
    while True:
        now = {(x.sink, x.webhook_id): x for x in store.letters(sink)}
        pending = [k for k in asked if k in now and now[k].replay]
        if not pending:
            break
        if len(pending) != waiting:
            last_change, waiting = time.monotonic(), len(pending)
        if time.monotonic() - last_change > DAEMON_SILENT_S:
            break
        time.sleep(0.2)
    result = ReplayResult()
    silent = f"not replayed by the daemon within {DAEMON_SILENT_S:.0f}s (still requested)"
    for key in asked:
        after = now.get(key)
        if after is None:
            result.delivered.append(key[1])
        elif after.replay:
            result.failed.append((key[1], silent))
        else:
            result.failed.append((key[1], after.last_outcome))
    return result


# -- rewind ------------------------------------------------------------------------------


def rewind(
    cfg: Config, sink: str, to: str, out: TextIO, err: TextIO, *, forward: bool = False
) -> int:
    """Move ``sink``'s cursor to ``to``; a move forward past events it has not delivered
    only with ``forward`` (see :mod:`eventsinkd.delivery.rewinds`)."""
    _check_sink(cfg, sink)
    sc = next(s for s in cfg.events.sinks if s.name == sink)
    target = parse_target(to)
    if isinstance(target, Position):
        pos = target
    else:
        found = position_before(cfg.wal.dir, LineParser(cfg.wal.mac_key_bytes), target)
        if found is None:
            if isinstance(target, Time):
                what = f"at or after {to} in {cfg.wal.dir}: the WAL ends before that time"
            else:
                what = f"with that payload_id ({to!r}) in {cfg.wal.dir}. --to takes {TO_FORMS}"
            err.write(f"eventsinkd: no memory_written entry {what}\n")
            return EXIT_FAILED
        pos = found
    lock = StateLock(cfg.state_dir)
    try:
        if lock.acquire("eventsinkd rewind"):
            return _rewind_here(cfg, sc, pos, forward, out, err)
        return _rewind_by_daemon(cfg, lock, sink, pos, forward, out, err)
    finally:
        lock.release()


def _rewind_here(
    cfg: Config, sink: SinkConfig, pos: Position, forward: bool, out: TextIO, err: TextIO
) -> int:
    store = PositionStore(cfg.state_dir, cfg.wal.dir, cursor_file(sink.name))
    unknown = NOT_SAVED
    try:
        saved = store.load(in_wal(cfg.wal.dir))  # PENDING entries it holds are kept
    except PositionFileError as exc:
        out.write(f"sink {sink.name}: its cursor cannot be used ({exc}): setting it\n")
        current, unknown = None, "an unusable cursor"
    else:
        if store.damage is not None:
            out.write(f"sink {sink.name}: {store.damage}; its previous copy is where it stands\n")
        current = saved_start(cfg, sink, saved)
    move = plan(cfg, sink, current, pos, unknown)
    if move.skipped and not forward:
        err.write(f"eventsinkd: {move.refusal()}\n")
        return EXIT_FAILED
    if not store.save(pos):
        err.write(f"eventsinkd: {store.last_error}\n")
        return EXIT_FAILED
    out.write(f"{move.done()}; delivery resumes there at the next start\n")
    return EXIT_OK


def _rewind_by_daemon(
    cfg: Config,
    lock: StateLock,
    sink: str,
    pos: Position,
    forward: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    path = request_rewind(cfg.state_dir, sink, pos, forward=forward)
    deadline = time.monotonic() + DAEMON_SILENT_S
    while path.exists():
        if time.monotonic() > deadline:
            path.unlink(missing_ok=True)  # withdrawn: it must not apply later by surprise
            err.write(f"eventsinkd: the daemon ({lock.holder()}) did not take the request\n")
            return EXIT_FAILED
        time.sleep(0.1)
    answer = take_answer(path) or {}
    if "refused" in answer:
        err.write(f"eventsinkd: the running daemon: {answer['refused']}\n")
        return EXIT_FAILED
    done = answer.get("moved") or f"sink {sink}: cursor moved to {describe(pos)}"
    out.write(f"the running daemon moved its cursor. {done}\n")
    return EXIT_OK
