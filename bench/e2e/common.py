"""What every end-to-end figure shares: the settings, the daemon as a child process, the
Nexus-like writer (as fast as it goes, or paced), waiting, and the WAL directory."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

import bench
from bench import proc_cpu_s, proc_status_kib
from bench.common import http_get
from bench.walgen import SEGMENT_BYTES
from eventsinkd.common.ports import free_port
from eventsinkd.devtools.child import DaemonDir
from eventsinkd.devtools.sim.entries import EntryMaker
from eventsinkd.devtools.sim.group_commit import Committed, GroupCommit, paced_writers
from eventsinkd.devtools.sim.nexus_writer import NexusWriter

PREWRITE_BATCH = 100  # entries per group commit when writing as fast as the writer can
CHURN_SEGMENT_BYTES = 1 << 20  # Nexus's smallest max_segment_size_mb, as in its fixtures
CHURN_WRITERS = 4
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.02
DEFAULT_MAX_INFLIGHT = 1_000
T = TypeVar("T")
_seeds = itertools.count(1)  # every writer gets its own seed: payload_ids never repeat


@dataclass(slots=True)
class Settings:
    quick: bool
    runs: int
    target_s: float  # seconds per throughput run
    load_s: float  # receiver capacity measurement
    lat_windows: int
    lat_window_s: float
    mem_entries: int
    mem_inflights: tuple[int, ...]
    mem_drop_bound_s: float
    mem_block_bound_s: float
    idle_s: float
    idle_windows: int
    # bench.e2e.cursors
    cur_run_s: float  # seconds per run of the healthy sink, alone and beside a dead one
    cur_backlog: int  # entries the added cursor catches up on
    cur_window_s: float  # the tailing sinks' latency window before the reload
    cur_bound_s: float  # the longest a catch-up may take
    cur_mem_bound_s: float  # 8 sinks over 1,000,000 entries: memory sampled this long at most
    cur_cpu_s: float  # seconds of writing per CPU measurement...
    cur_cpu_windows: int  # ...in this many windows
    idle_rate: float = 1_000.0
    # bench.e2e.dirsize
    dir_window_s: float = 10.0  # seconds per CPU window...
    dir_windows: int = 2  # ...this many per daemon

    @classmethod
    def make(cls, quick: bool, runs: int | None = None) -> Settings:
        if quick:
            return cls(
                True, runs or 1, 1.0, 1.5, 1, 3.0, 1_000_000, (1_000,), 45, 10, 5.0, 1,
                cur_run_s=2.0, cur_backlog=50_000, cur_window_s=2.0, cur_bound_s=30.0,
                cur_mem_bound_s=10.0, cur_cpu_s=4.0, cur_cpu_windows=1,
                dir_window_s=5.0, dir_windows=1,
            )  # fmt: skip
        return cls(
            False, runs or 3, 3.0, 3.0, 3, 3.4, 1_000_000, (1_000, 10_000), 90, 20, 20.0, 4,
            cur_run_s=5.0, cur_backlog=500_000, cur_window_s=10.0, cur_bound_s=120.0,
            cur_mem_bound_s=60.0, cur_cpu_s=20.0, cur_cpu_windows=4,
        )  # fmt: skip


def stage(name: str) -> contextlib.AbstractContextManager[None]:
    """Progress on stderr, as ``... e2e: name (n s)``."""
    return bench.stage(f"e2e: {name}")


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = POLL_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


# -- the daemon ------------------------------------------------------------------------


def dead_url() -> str:
    """A webhook URL on 127.0.0.1 where nothing listens: a dead sink (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/hook"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Daemon(DaemonDir):
    """``python -m eventsinkd run -c <config>`` as a child process; always terminated."""

    def __init__(
        self,
        root: Path,
        sinks: list[dict[str, Any]],
        *,
        wal: Path | None = None,
        **events: Any,
    ) -> None:
        super().__init__(root, wal=wal)
        self.write_config(sinks, wal={"start_at": "beginning"}, events=events)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True) -> Daemon:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def reload(self, sinks: list[dict[str, Any]]) -> None:
        """Rewrite the config with ``sinks`` and send SIGHUP: a live reload. The caller waits
        for its effect (e.g. a new sink in ``/status``)."""
        assert self.proc is not None
        self.cfg["events"]["sinks"] = sinks
        self.config.write_text(yaml.safe_dump(self.cfg))
        self.proc.send_signal(signal.SIGHUP)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{self.log_tail()}")

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(http_get(self.admin_port, "/status"))
        return doc

    def sink(self, name: str) -> dict[str, Any]:
        sink: dict[str, Any] = self.status()["sinks"][name]
        return sink

    def cpu_s(self) -> float:
        """The daemon's utime+stime."""
        return proc_cpu_s(self.pid)

    def cpu_pct(self, during: Callable[[], T]) -> tuple[float, T]:
        """The daemon's CPU% of one core while ``during`` runs, and what it returned."""
        c0, t0 = self.cpu_s(), time.monotonic()
        out = during()
        return (self.cpu_s() - c0) / (time.monotonic() - t0) * 100, out

    def mem_kib(self) -> dict[str, int]:
        """The daemon's VmRSS and VmHWM."""
        return proc_status_kib(self.pid)

    def loop(self) -> str:
        """The event loop the daemon runs on, from the libraries it has mapped."""
        try:
            maps = Path(f"/proc/{self.pid}/maps").read_text()
        except OSError:
            return "?"
        return "uvloop" if "/uvloop/" in maps else "asyncio"

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- writing ---------------------------------------------------------------------------


def hook_id(payload_id: str) -> str:
    return f"memory_written:{payload_id}"


def new_writer(wal: Path) -> NexusWriter:
    """A Nexus-like writer into ``wal`` with a seed of its own (payload_ids never repeat).

    Its segments are Nexus's default max_segment_size_mb (NexusWriter's default is tiny).
    Like Nexus under group commit, it pre-creates an empty segment on every append between
    80% and 100% fill, so the WAL directory gains many empty segments over time."""
    return NexusWriter(wal, max_segment_bytes=SEGMENT_BYTES, seed=next(_seeds))


def write_fast(
    wal: Path, n: int, entries: Callable[[EntryMaker], EntryMaker] | None = None
) -> None:
    """``n`` entries into ``wal`` as fast as the writer goes, group commits of 100 (``entries``
    can replace the writer's entry maker, e.g. to vary the subjects)."""
    w = new_writer(wal)
    if entries is not None:
        w._entries = entries(w._entries)
    done = 0
    while done < n:
        k = min(PREWRITE_BATCH, n - done)
        w.append(k)
        done += k
    w.close()


def prewrite(
    stage_dir: Path, n: int, entries: Callable[[EntryMaker], EntryMaker] | None = None
) -> list[str]:
    """Write ``n`` entries into ``stage_dir`` as fast as the writer can; the files, in order."""
    shutil.rmtree(stage_dir, ignore_errors=True)
    write_fast(stage_dir, n, entries)
    return sorted(os.listdir(stage_dir))


@dataclass(slots=True)
class Paced:
    fsynced: dict[str, int]  # webhook-id -> monotonic ns right after the append's fsync
    appends: int
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.fsynced) / self.seconds if self.seconds > 0 else 0.0


def paced_write(w: NexusWriter, rate: float, seconds: float) -> Paced:
    """Append ``rate`` entries/s for ``seconds``: each append takes every entry due by then."""
    total = max(1, round(rate * seconds))
    interval_ns = 1e9 / rate
    fsynced: dict[str, int] = {}
    done = appends = 0
    start = time.monotonic_ns()
    while done < total:
        now = time.monotonic_ns()
        due = min(total, int((now - start) / interval_ns) + 1)
        if due <= done:
            time.sleep(max(0.0, (start + done * interval_ns - now) / 1e9))
            continue
        recs = w.append(due - done)
        t = time.monotonic_ns()
        for r in recs:
            if r.entry_type == "":
                fsynced[hook_id(r.payload_id)] = t
        done = due
        appends += 1
    return Paced(fsynced, appends, (time.monotonic_ns() - start) / 1e9)


def new_group_commit(wal: Path) -> GroupCommit:
    """Nexus's group commit into ``wal``: the file churn production sees (``group_commit``).

    1 MiB segments, rotation and pre-creation right after each batch as Nexus does them: about
    90 new files/s at 500 appends/s from 4 writers, almost all staying empty."""
    return GroupCommit(
        NexusWriter(wal, max_segment_bytes=CHURN_SEGMENT_BYTES, seed=next(_seeds), grow_after=True)
    )


def paced_group_write(
    commit: GroupCommit, rate: float, seconds: float, writers: int = CHURN_WRITERS
) -> Paced:
    """``writers`` threads appending ``rate`` entries/s in all through ``commit`` for ``seconds``;
    each entry's time is when its batch's fsync returned (when Nexus's ``Append`` returns)."""
    fsynced: dict[str, int] = {}

    def note(c: Committed) -> None:
        fsynced[hook_id(c.record.payload_id)] = c.fsynced_ns

    batches = commit.batches
    seconds_taken = paced_writers(commit, rate, seconds, writers, note)
    return Paced(fsynced, commit.batches - batches, seconds_taken)


def wal_files(wal: Path) -> tuple[int, int]:
    """(segment files, empty ones) in ``wal``."""
    total = empty = 0
    with os.scandir(wal) as it:
        for e in it:
            if e.name.startswith("wal-") and e.name.endswith(".jsonl"):
                total += 1
                empty += e.stat().st_size == 0
    return total, empty
