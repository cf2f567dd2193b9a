"""`eventsinkd rewind`: a sink delivers again from an entry on, with the daemon running or stopped.

Real daemon subprocess, real receiver on 127.0.0.1, the command as a real
subprocess.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from daemon_harness import (
    Daemon,
    eventsinkd,
    run_cli,
    settle,
    until,
    wait_cursor_at_end,
    webhook_ids,
)

from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

APPENDS, PER_APPEND = 6, 5  # before the split, and again after it


@dataclass
class Wal:
    writer: NexusWriter
    ids: list[str]  # webhook-ids in WAL order
    split: int  # index of the first event of the second half

    def target(self, kind: str) -> tuple[str, int]:
        """``--to`` for ``kind``, and the index of the first event it must send again."""
        if kind == "time":  # the split's own timestamp ("at or after"), given at UTC+2
            return in_utc_plus_2(self.writer.expected_data()[self.split].timestamp), self.split
        if kind == "payload_id":  # the 4th line of a segment: not at a segment's start
            k = 2 * PER_APPEND + 3
            return self.writer.expected_data()[k].payload_id, k
        assert kind == "beginning"
        return "beginning", 0


def in_utc_plus_2(go_time: str) -> str:
    """A Go RFC 3339 UTC time ("...Z", up to 9 fraction digits) as the same instant at +02:00."""
    m = re.fullmatch(r"(.{19})(\.\d+)?Z", go_time)
    assert m is not None, go_time
    local = datetime.fromisoformat(m[1] + "+00:00").astimezone(timezone(timedelta(hours=2)))
    return f"{local:%Y-%m-%dT%H:%M:%S}{m[2] or ''}+02:00"


async def write_wal(wal_dir: Path, *, whole_second_between: bool) -> Wal:
    """Two halves, one segment per append; optionally a whole second between the two.

    The writer rounds some timestamps down (to the second, the ms, ...): only after
    the next whole second is every timestamp of the second half newer than all of
    the first half's, which a rewind to a time needs.
    """
    w = NexusWriter(wal_dir, max_segment_bytes=1)  # every append starts a new segment
    for _ in range(APPENDS):
        w.append(PER_APPEND)
    if whole_second_between:
        boundary = float(int(time.time() + 0.001) + 1)
        await until(lambda: time.time() >= boundary)  # the clock, not another process
    for _ in range(APPENDS):
        w.append(PER_APPEND)
    return Wal(w, webhook_ids(w), APPENDS * PER_APPEND)


@pytest.mark.parametrize("target", ["time", "payload_id", "beginning"])
@pytest.mark.parametrize("daemon", ["running", "stopped"])
async def test_rewind_sends_again_exactly_from_that_entry_on(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon], daemon: str, target: str
) -> None:
    d = new_daemon([{"name": "s", "url": receiver.url}], overflow="block")
    wal = await write_wal(d.wal, whole_second_between=target == "time")
    to, k = wal.target(target)
    await d.start()
    await receiver.wait_for(len(wal.ids))
    await settle(d)
    assert Counter(receiver.ids) == Counter(wal.ids)
    seen = len(receiver.requests)

    running = daemon == "running"
    if not running:
        assert await d.stop() == 0
    res = await eventsinkd("rewind", "-c", d.config, "--sink", "s", "--to", to)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("the running daemon moved its cursor" in res.stdout) == running, res.stdout
    if not running:
        await d.start()

    await receiver.wait_for(seen + len(wal.ids) - k)
    await settle(d)
    # Each from the k-th on once more, with the same webhook-id; none before it.
    assert Counter(receiver.ids[seen:]) == Counter(wal.ids[k:])
    await wait_cursor_at_end(d, wal.writer)
    assert await d.stop() == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--sink", "nosuch", "--to", "beginning"], 2, "no sink named 'nosuch' in the config"),
        (["--sink", "s", "--to", "2026-04-10T12:00:00"], 2, "has no time zone"),
        (["--sink", "s", "--to", "f" * 32], 1, "no memory_written entry with that payload_id"),
        (["--sink", "s", "--to", "2999-01-01T00:00:00Z"], 1, "no memory_written entry at or after"),
    ],
)
def test_rewind_refuses_bad_arguments_and_unknown_entries(
    new_daemon: Callable[..., Daemon], args: list[str], code: int, message: str
) -> None:
    d = new_daemon([{"name": "s", "url": "http://127.0.0.1:9/hook"}])
    NexusWriter(d.wal).append(5)
    res = run_cli("rewind", "-c", d.config, *args)
    assert res.returncode == code, res.stdout + res.stderr
    # Usage errors are on stderr; manage.rewind prints "not found" on stdout.
    assert message in (res.stderr if code == 2 else res.stdout + res.stderr)
    assert not (d.root / "state" / "cursors").exists()  # no cursor was moved
