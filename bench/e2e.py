"""End to end: the Nexus-like writer -> WAL -> the real ``eventsinkd run`` -> a receiver.

    python -m bench.e2e            # about 5 minutes
    python -m bench.e2e --quick    # about a minute

Three kinds of process, all on 127.0.0.1: this one (the Nexus-like writer,
``eventsinkd.sim.nexus_writer.NexusWriter``: every ``append`` is one fsynced group
commit), the daemon (``python -m eventsinkd run -c <tmp config>``, on uvloop when it
is installed, as in production) and ``bench/receiver.py`` (a raw asyncio HTTP receiver,
204 after a configurable latency, that reports what arrived on ``GET /__stats``).
The daemon's CPU time is utime+stime from ``/proc/<pid>/stat``, its memory VmRSS and
VmHWM from ``/proc/<pid>/status``.

a. Throughput: the WAL is pre-written by the writer as fast as it can (group commits of
   100 entries) into a staging directory while the daemon idles, then its segments are
   renamed into the daemon's (followed, initially empty) WAL directory all at once: each
   run measures catch-up + delivery, from the first rename to the arrival of the last
   webhook at the receiver, without the daemon's start-up. ``overflow: block`` (default
   ``max_inflight`` 1,000), so nothing can be dropped; delivered must equal written.
   One daemon per cell; a warm-up run sizes N so a run lasts about ``--seconds``.
b. Latency from a line's fsync (when ``append`` returns) to its arrival at the receiver,
   per ``webhook-id``; both sides take ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one
   clock for every process on Linux). The writer appends at a fixed rate, each append
   one fsync; when fsyncs cannot keep up with the rate, appends carry more than one
   entry (group commit, as Nexus does).
c. Memory with a 1,000,000-entry backlog (bench/walgen.py, cached in bench/results/)
   behind a dead sink (a port where nothing listens): drop mode until the whole WAL is
   read, block mode until reading pauses (the queue is full) or a time bound.
d. The daemon's CPU% (of one core) with nothing written, and with 1,000 events/s
   written and delivered.
e. A 2,000-event burst against a receiver that never answers, default ``max_inflight``
   1,000: how many events are dropped in drop mode and in block mode (Nexus's own
   notifier drops half).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import Row, nproc, percentile, print_table
from bench.delivery import (
    NEXUS_EVENTS_PER_S,
    Receiver,
    _machine_busy_s,
    _own_cpu_s,
    load_receiver,
)
from bench.walgen import cached_wal
from eventsinkd.sim.nexus_writer import NexusWriter

# The writer's segments: Nexus's default max_segment_size_mb (NexusWriter's default is tiny).
# Like Nexus under group commit, the writer pre-creates an empty segment on every append
# between 80% and 100% fill, so the WAL directory gains many empty segments over time.
SEGMENT_BYTES = 50 * 1024 * 1024
LEFTOVER_EMPTY_SEGMENTS = 5_000  # part d: a WAL directory after some rotations
PREWRITE_BATCH = 100  # entries per group commit when pre-writing
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.02
LATENCY_RATES = (100, 1_000, 5_000)
LATENCIES_MS = (0, 10)
CONCURRENCIES = (1, 8, 64)
MAX_RUN_EVENTS = 100_000
MIN_RUN_EVENTS = 100
DEFAULT_MAX_INFLIGHT = 1_000
NEXUS_BURST = 2_000  # Nexus drops half of it with its default queue of 1,000
NEVER_MS = 3_600_000.0  # a receiver "latency" that outlasts every run: it never answers
CLK_TCK = os.sysconf("SC_CLK_TCK")
_seeds = itertools.count(1)  # every writer gets its own seed: payload_ids never repeat


def hook_id(payload_id: str) -> str:
    return f"memory_written:{payload_id}"


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def http_get(port: int, path: str, timeout_s: float = 10.0) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} on port {port}: HTTP {resp.status}")
        return body
    finally:
        conn.close()


def rstats(rcv: Receiver, arrivals: bool = False) -> dict[str, Any]:
    """The receiver's ``GET /__stats`` (with every arrival time if asked)."""
    doc: dict[str, Any] = json.loads(
        http_get(rcv.port, "/__stats" + ("?arrivals=1" if arrivals else ""))
    )
    return doc


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (``/proc/<pid>/stat``, clock ticks)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out = {"VmRSS": -1, "VmHWM": -1}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1])
    return out


def wal_files(wal: Path) -> tuple[int, int]:
    """(segment files, empty ones) in ``wal``."""
    total = empty = 0
    with os.scandir(wal) as it:
        for e in it:
            if e.name.startswith("wal-") and e.name.endswith(".jsonl"):
                total += 1
                empty += e.stat().st_size == 0
    return total, empty


def add_leftover_segments(wal: Path, active: str, n: int) -> None:
    """``n`` empty segments named before ``active``: what earlier rotations leave behind
    (Nexus never deletes segments, and pre-creates many that stay empty)."""
    ns = int(active.removeprefix("wal-").removesuffix(".jsonl"))
    for k in range(n, 0, -1):
        fd = os.open(wal / f"wal-{ns - k}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


class Daemon:
    """``python -m eventsinkd run -c <config>`` as a child process; always terminated."""

    def __init__(
        self,
        root: Path,
        sinks: list[dict[str, Any]],
        *,
        wal: Path | None = None,
        **events: Any,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.wal = wal if wal is not None else root / "wal"
        self.wal.mkdir(mode=0o700, exist_ok=True)
        self.admin_port = free_port()
        self.config = root / "config.yaml"
        self.log = root / "daemon.log"
        cfg = {
            "wal": {"dir": str(self.wal), "start_at": "beginning"},
            "state_dir": str(root / "state"),
            "events": {**events, "sinks": sinks},
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
        }
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True) -> Daemon:
        cmd = [sys.executable, "-m", "eventsinkd", "run", "-c", str(self.config)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
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
            with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
                http_get(self.admin_port, "/readyz", 2.0)
                return
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(http_get(self.admin_port, "/status"))
        return doc

    def sink(self, name: str) -> dict[str, Any]:
        sink: dict[str, Any] = self.status()["sinks"][name]
        return sink

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def mem_kib(self) -> dict[str, int]:
        return proc_mem_kib(self.pid)

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


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = POLL_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"... e2e: {name}", end="", flush=True, file=sys.stderr)
    try:
        yield
    finally:
        print(f" ({time.monotonic() - started:.1f} s)", flush=True, file=sys.stderr)


# -- writing ---------------------------------------------------------------------------


def prewrite(stage: Path, n: int) -> list[str]:
    """Write ``n`` entries into ``stage`` as fast as the writer can; the files, in order."""
    shutil.rmtree(stage, ignore_errors=True)
    w = NexusWriter(stage, max_segment_bytes=SEGMENT_BYTES, seed=next(_seeds))
    done = 0
    while done < n:
        k = min(PREWRITE_BATCH, n - done)
        w.append(k)
        done += k
    w.close()
    return sorted(os.listdir(stage))


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


# -- a. throughput ---------------------------------------------------------------------


@dataclass(slots=True)
class TpRun:
    events: int
    seconds: float  # first rename -> arrival of the last webhook
    cpu_s: float  # the daemon's utime+stime over the run
    receiver_cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / self.events * 1000


@dataclass(slots=True)
class TpCell:
    latency_ms: int
    concurrency: int
    events: int = 0
    runs: list[TpRun] = field(default_factory=list)
    written: int = 0
    delivered: int = 0
    received: int = 0
    hwm_kib: int = 0
    loop: str = "?"

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def cpu_per_1k(self) -> float:
        return statistics.median(r.cpu_per_1k for r in self.runs)

    @property
    def receiver_busy(self) -> float:
        return statistics.median(r.receiver_cpu_s / r.seconds for r in self.runs)


def feed(d: Daemon, rcv: Receiver, root: Path, n: int, timeout_s: float) -> TpRun:
    """Pre-write ``n`` entries, hand them to the daemon at once, time them to the receiver."""
    stage = root / "stage"
    names = prewrite(stage, n)
    before = rstats(rcv)
    want = before["received"] + n
    c0 = d.cpu_s()
    t0 = time.monotonic_ns()
    for name in names:
        os.rename(stage / name, d.wal / name)
    last: dict[str, Any] = before

    def done() -> bool:
        nonlocal last
        last = rstats(rcv)
        if last["requests"] < want:
            d.check_alive()
        return bool(last["requests"] >= want)

    wait_for(done, timeout_s, f"{n:,} webhooks at the receiver")
    c1 = d.cpu_s()
    if last["received"] != want:
        raise RuntimeError(f"the receiver got {last['received'] - before['received']} of {n}")
    return TpRun(n, (last["last_ns"] - t0) / 1e9, c1 - c0, last["cpu_s"] - before["cpu_s"])


def throughput_cell(
    rcv: Receiver, concurrency: int, runs: int, target_s: float, work: Path
) -> TpCell:
    latency = int(rcv.latency_ms)
    cell = TpCell(latency, concurrency)
    root = work / f"tp-{latency}ms-c{concurrency}"
    sinks = [{"name": "bench", "url": rcv.url, "concurrency": concurrency}]
    with Daemon(root, sinks, overflow="block").start() as d:
        cell.loop = d.loop()
        # Warm-up (connections, caches) that also sizes N for a run of about target_s.
        n0 = 3_000 if latency == 0 else 60 * concurrency
        warm = feed(d, rcv, root, n0, 60.0)
        cell.written += n0
        n = round(warm.rate * target_s, -1)
        cell.events = int(max(MIN_RUN_EVENTS, min(MAX_RUN_EVENTS, n)))
        for _ in range(runs):
            timeout_s = max(30.0, 5 * cell.events / max(warm.rate, 1.0))
            cell.runs.append(feed(d, rcv, root, cell.events, timeout_s))
            cell.written += cell.events
        time.sleep(0.3)
        sink = d.sink("bench")
        cell.delivered = sink["delivered"]
        cell.hwm_kib = d.mem_kib()["VmHWM"]
        if sink["delivered"] != cell.written or sink["dropped"] or sink["failed"]:
            raise RuntimeError(
                f"{latency} ms, concurrency {concurrency}: written {cell.written:,}, delivered "
                f"{sink['delivered']:,}, dropped {sink['dropped']:,}, failed {sink['failed']:,}"
            )
    return cell


# -- b. latency ------------------------------------------------------------------------


@dataclass(slots=True)
class LatWindow:
    written: int
    arrived: int
    appends: int
    write_rate: float
    latencies_ms: list[float]

    def pct(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


@dataclass(slots=True)
class LatResult:
    rate: int
    windows: list[LatWindow] = field(default_factory=list)
    dropped: int = 0
    segments: tuple[int, int] = (0, 0)  # segment files in the WAL at the end, empty ones

    def median(self, fn: Callable[[LatWindow], float]) -> float:
        return statistics.median(fn(w) for w in self.windows)


def latency_rate(rcv: Receiver, rate: int, windows: int, window_s: float, work: Path) -> LatResult:
    res = LatResult(rate)
    root = work / f"lat-{rate}"
    with Daemon(root, [{"name": "bench", "url": rcv.url}]).start() as d:
        w = NexusWriter(d.wal, max_segment_bytes=SEGMENT_BYTES, seed=next(_seeds))
        base = rstats(rcv)["unique"]
        warm = paced_write(w, 50, 0.4)  # warm-up: the first connections, the watcher
        wait_for(lambda: rstats(rcv)["unique"] >= base + len(warm.fsynced), 10, "the warm-up")
        runs: list[Paced] = []
        for _ in range(windows):
            p = paced_write(w, rate, window_s)
            runs.append(p)
            target = base + len(warm.fsynced) + sum(len(r.fsynced) for r in runs)
            with contextlib.suppress(RuntimeError):
                wait_for(lambda t=target: rstats(rcv)["unique"] >= t, 5.0, "the last arrivals")
            time.sleep(0.2)
        w.close()
        res.dropped = d.sink("bench")["dropped"]
        res.segments = wal_files(d.wal)
    arrivals: dict[str, int] = rstats(rcv, arrivals=True)["arrivals"]
    for p in runs:
        lat = [(arrivals[k] - t) / 1e6 for k, t in p.fsynced.items() if k in arrivals]
        res.windows.append(LatWindow(len(p.fsynced), len(lat), p.appends, p.rate, lat))
    return res


# -- c. memory -------------------------------------------------------------------------


@dataclass(slots=True)
class MemResult:
    mode: str
    max_inflight: int
    entries: int
    lines_read: int = 0
    seconds: float = 0.0
    offered: int = 0
    dropped: int = 0
    held: int = 0
    rss_end_kib: int = 0
    rss_sampled_max_kib: int = 0  # the largest VmRSS seen, sampled every 0.25 s
    hwm_kib: int = 0  # VmHWM: the kernel's peak, between samples too
    finished: bool = False  # drop: read the whole WAL; block: reading paused


def memory_run(
    wal_dir: Path,
    entries: int,
    mode: str,
    max_inflight: int,
    bound_s: float,
    work: Path,
    tag: int = 0,
) -> MemResult:
    res = MemResult(mode, max_inflight, entries)
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    root = work / f"mem-{mode}-{max_inflight}-{tag}"
    sinks = [{"name": "dead", "url": dead}]
    d = Daemon(
        root, sinks, wal=wal_dir, overflow=mode, max_inflight=max_inflight, shutdown_timeout_s=0.5
    )
    with d:
        t0 = time.monotonic()
        d.start(wait=False)
        deadline = t0 + bound_s
        last_lines, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            d.check_alive()
            with contextlib.suppress(OSError):
                rss = d.mem_kib()["VmRSS"]
                res.rss_sampled_max_kib = max(res.rss_sampled_max_kib, rss)
            try:
                st = d.status()
            except (OSError, RuntimeError, http.client.HTTPException):
                continue  # not listening yet
            lines = st["reader"]["lines"]
            res.lines_read = lines
            if mode == "drop" and lines > 0 and st["lag"]["bytes_behind"] == 0:
                res.finished = True
                break
            if lines != last_lines:
                last_lines, still_since = lines, time.monotonic()
            elif mode == "block" and lines > 0 and time.monotonic() - still_since >= 2.0:
                res.finished = True  # reading has paused: the queue is full
                break
        res.seconds = time.monotonic() - t0
        mem = d.mem_kib()
        res.rss_end_kib, res.hwm_kib = mem["VmRSS"], mem["VmHWM"]
        res.rss_sampled_max_kib = max(res.rss_sampled_max_kib, res.rss_end_kib)
        sink = d.status()["sinks"]["dead"]
        res.offered, res.dropped, res.held = sink["offered"], sink["dropped"], sink["queue_depth"]
    return res


# -- d. idle cost ----------------------------------------------------------------------


@dataclass(slots=True)
class IdleResult:
    idle_pct: list[float] = field(default_factory=list)
    loaded_pct: list[float] = field(default_factory=list)
    leftover_pct: list[float] = field(default_factory=list)  # same, with leftover segments
    segments: tuple[int, int] = (0, 0)  # before the leftover segments are added
    idle_rss_kib: int = 0
    written: int = 0
    delivered: int = 0
    dropped: int = 0
    write_rate: float = 0.0
    window_s: float = 0.0


def idle_cost(rcv: Receiver, seconds: float, windows: int, rate: float, work: Path) -> IdleResult:
    res = IdleResult(window_s=seconds / windows)
    with Daemon(work / "idle", [{"name": "bench", "url": rcv.url}]).start() as d:
        w = NexusWriter(d.wal, max_segment_bytes=SEGMENT_BYTES, seed=next(_seeds))
        base = rstats(rcv)["requests"]
        warm = paced_write(w, 50, 0.2)  # one connection up, as in a running deployment
        res.written += len(warm.fsynced)
        wait_for(lambda: rstats(rcv)["requests"] >= base + res.written, 10, "the warm-up")
        time.sleep(1.0)
        for _ in range(windows):
            c0, t0 = d.cpu_s(), time.monotonic()
            time.sleep(res.window_s)
            res.idle_pct.append((d.cpu_s() - c0) / (time.monotonic() - t0) * 100)
        res.idle_rss_kib = d.mem_kib()["VmRSS"]
        rates = []
        for _ in range(windows):
            c0, t0 = d.cpu_s(), time.monotonic()
            p = paced_write(w, rate, res.window_s)
            res.loaded_pct.append((d.cpu_s() - c0) / (time.monotonic() - t0) * 100)
            res.written += len(p.fsynced)
            rates.append(p.rate)
        res.write_rate = statistics.median(rates)
        res.segments = wal_files(d.wal)
        # The same load with the directory a long-running Nexus leaves: many empty segments.
        add_leftover_segments(d.wal, w.active_segment, LEFTOVER_EMPTY_SEGMENTS)
        time.sleep(1.0)
        for _ in range(windows):
            c0, t0 = d.cpu_s(), time.monotonic()
            p = paced_write(w, rate, res.window_s)
            res.leftover_pct.append((d.cpu_s() - c0) / (time.monotonic() - t0) * 100)
            res.written += len(p.fsynced)
        w.close()
        with contextlib.suppress(RuntimeError):
            wait_for(lambda: rstats(rcv)["requests"] >= base + res.written, 10, "deliveries")
        sink = d.sink("bench")
        res.delivered, res.dropped = sink["delivered"], sink["dropped"]
    return res


# -- e. a burst against a receiver that never answers ------------------------------------


@dataclass(slots=True)
class BurstResult:
    mode: str
    offered: int
    dropped: int
    held: int
    lines_read: int


def burst(rcv: Receiver, mode: str, n: int, work: Path, tag: int) -> BurstResult:
    root = work / f"burst-{mode}-{tag}"
    sinks = [{"name": "blocked", "url": rcv.url}]
    with Daemon(root, sinks, overflow=mode, shutdown_timeout_s=0.5).start() as d:
        w = NexusWriter(d.wal, max_segment_bytes=SEGMENT_BYTES, seed=next(_seeds))
        done = 0
        while done < n:  # as fast as the writer goes, group commits of 100
            k = min(PREWRITE_BATCH, n - done)
            w.append(k)
            done += k
        w.close()
        st: dict[str, Any] = {}
        seen: list[int] = []

        def settled() -> bool:
            nonlocal st
            st = d.status()
            sink = st["sinks"]["blocked"]
            if mode == "drop":
                return bool(sink["offered"] >= n and st["lag"]["bytes_behind"] == 0)
            seen.append(st["reader"]["lines"])  # block: reading paused for 1 s
            return len(seen) > 10 and seen[-1] == seen[-11] and sink["queue_depth"] > 0

        wait_for(settled, 20.0, f"the {mode}-mode daemon to settle", poll_s=0.1)
        sink = st["sinks"]["blocked"]
        return BurstResult(
            mode, sink["offered"], sink["dropped"], sink["queue_depth"], st["reader"]["lines"]
        )


# -- all of it -------------------------------------------------------------------------


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
    idle_rate: float = 1_000.0

    @classmethod
    def make(cls, quick: bool, runs: int | None = None) -> Settings:
        if quick:
            return cls(True, runs or 1, 1.0, 1.5, 1, 3.0, 1_000_000, (1_000,), 45, 10, 5.0, 1)
        return cls(False, runs or 3, 3.0, 3.0, 3, 3.4, 1_000_000, (1_000, 10_000), 90, 20, 20.0, 4)


@dataclass(slots=True)
class Results:
    settings: Settings
    loop: str = "?"
    capacities: dict[int, Any] = field(default_factory=dict)
    cells: list[TpCell] = field(default_factory=list)
    latencies: list[LatResult] = field(default_factory=list)
    memory: list[MemResult] = field(default_factory=list)
    mem_wal: str = ""
    idle: IdleResult | None = None
    bursts: dict[str, list[BurstResult]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    machine_note: str = ""


def _guard(res: Results, what: str, fn: Callable[[], None]) -> None:
    """Run one part; a failure is recorded (and shown in the table), the others still run."""
    try:
        fn()
    except Exception as exc:
        res.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        print(f"\n!! e2e {what} failed: {exc}", file=sys.stderr, flush=True)


def measure(settings: Settings, base_dir: Path | None = None) -> Results:
    res = Results(settings)
    s = settings
    started = time.monotonic()
    busy_before, own_before = _machine_busy_s(), _own_cpu_s()
    with tempfile.TemporaryDirectory(prefix="eventsinkd-e2e-", dir=base_dir) as tmp:
        work = Path(tmp)

        def throughput() -> None:
            for latency in LATENCIES_MS:
                with Receiver(latency) as rcv:
                    with _stage(f"receiver alone, {latency} ms"):
                        res.capacities[latency] = load_receiver(rcv, 64, s.load_s, uvloop=True)
                    for conc in CONCURRENCIES:
                        with _stage(f"throughput, {latency} ms receiver, concurrency {conc}"):
                            cell = throughput_cell(rcv, conc, s.runs, s.target_s, work)
                        res.cells.append(cell)
                        res.loop = cell.loop

        def latency() -> None:
            with Receiver(0, record_arrivals=True) as rcv:
                for rate in LATENCY_RATES:
                    with _stage(f"latency at {rate:,} appends/s"):
                        res.latencies.append(
                            latency_rate(rcv, rate, s.lat_windows, s.lat_window_s, work)
                        )

        def idle() -> None:
            with Receiver(0) as rcv, _stage("idle and 1,000 events/s CPU"):
                res.idle = idle_cost(rcv, s.idle_s, s.idle_windows, s.idle_rate, work)

        def memory() -> None:
            wal_dir, info = cached_wal(s.mem_entries)
            res.mem_wal = f"{info.entries:,} entries, {info.bytes / 1e6:,.0f} MB"
            for mode in ("drop", "block"):
                bound = s.mem_drop_bound_s if mode == "drop" else s.mem_block_bound_s
                for mi in s.mem_inflights:
                    # The default gets several runs; other sizes one, to show the scaling.
                    for i in range(s.runs if mi == DEFAULT_MAX_INFLIGHT else 1):
                        with _stage(f"memory, {mode} mode, max_inflight {mi:,}, run {i + 1}"):
                            res.memory.append(
                                memory_run(wal_dir, s.mem_entries, mode, mi, bound, work, i)
                            )

        def bursts() -> None:
            with Receiver(NEVER_MS) as rcv:
                for mode in ("drop", "block"):
                    with _stage(f"{NEXUS_BURST:,}-event burst, blocked receiver, {mode} mode"):
                        res.bursts[mode] = [
                            burst(rcv, mode, NEXUS_BURST, work, i) for i in range(s.runs)
                        ]

        _guard(res, "throughput", throughput)
        _guard(res, "latency", latency)
        _guard(res, "idle cost", idle)
        _guard(res, "memory", memory)
        _guard(res, "burst", bursts)
    res.seconds = time.monotonic() - started
    busy_after, own = _machine_busy_s(), _own_cpu_s() - own_before
    if busy_before is not None and busy_after is not None:
        avail = res.seconds * nproc()
        other = max(0.0, busy_after - busy_before - own)
        res.machine_note = (
            f"e2e used {own:.0f} CPU-s; other processes on the machine used {other:.0f} of the "
            f"{avail:.0f} CPU-s available ({other / avail:.0%})"
        )
    return res


# -- rows ------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"


def rows_for(res: Results) -> list[Row]:
    s = res.settings
    rows: list[Row] = []
    runs_of = f"median of {s.runs}"
    for latency, cap in sorted(res.capacities.items()):
        per_cpu = 1e6 / cap.receiver_cpu_us if cap.receiver_cpu_us > 0 else 0.0
        rows.append(
            Row(
                "e2e receiver alone",
                f"{latency} ms receiver req/s",
                f"{cap.rate:,.0f}",
                f"aiohttp load generator, 64 connections; receiver {cap.receiver_cpu_us:,.0f} us "
                f"CPU/req = {per_cpu:,.0f} req per CPU-second",
            )
        )
    for c in res.cells:
        rates = " / ".join(f"{r.rate:,.0f}" for r in c.runs)
        nexus = NEXUS_EVENTS_PER_S[c.latency_ms]
        rows.append(
            Row(
                f"e2e throughput ({c.loop})",
                f"{c.latency_ms} ms, conc {c.concurrency} events/s",
                f"{c.rate:,.0f}",
                f"{runs_of} ({rates}) x {c.events:,} ev; {c.rate / nexus:.2f}x Nexus; "
                f"receiver busy {c.receiver_busy:.0%}",
            )
        )
        rows.append(
            Row(
                f"e2e throughput ({c.loop})",
                f"{c.latency_ms} ms, conc {c.concurrency} CPU-s/1k ev",
                f"{c.cpu_per_1k:.3f}",
                f"daemon utime+stime; delivered {c.delivered:,} = written {c.written:,}; "
                f"peak RSS {mib(c.hwm_kib)}",
            )
        )
    if res.cells:
        rows.append(
            Row(
                "e2e throughput",
                "method",
                "pre-written",
                "WAL pre-written by NexusWriter (group commits of 100), segments renamed into the "
                "followed WAL dir at once: catch-up + delivery; overflow block, max_inflight 1,000",
            )
        )
    for lr in res.latencies:
        label = f"e2e latency {lr.rate:,}/s"
        if not any(w.latencies_ms for w in lr.windows):
            rows.append(Row(label, "fsync->arrival", "n/a", "nothing arrived"))
            continue
        wins = [w for w in lr.windows if w.latencies_ms]
        written = sum(w.written for w in lr.windows)
        missing = written - sum(w.arrived for w in lr.windows)
        p50 = statistics.median(w.pct(50) for w in wins)
        p99 = statistics.median(w.pct(99) for w in wins)
        mx = statistics.median(max(w.latencies_ms) for w in wins)
        per_append = written / max(1, sum(w.appends for w in lr.windows))
        rate = statistics.median(w.write_rate for w in lr.windows)
        mn = min(min(w.latencies_ms) for w in wins)
        rows.append(
            Row(
                label,
                "p50 / p99 / max ms",
                f"{_ms(p50)} / {_ms(p99)} / {_ms(mx)}",
                f"median of {len(wins)} x {s.lat_window_s:g} s; wrote {rate:,.0f}/s, "
                f"{per_append:.1f} entries/append; {written - missing:,}/{written:,} arrived"
                f"{f' ({missing:,} MISSING)' if missing else ''}; dropped {lr.dropped:,}; "
                f"min {_ms(mn)} ms; p99 of each: "
                + " / ".join(_ms(w.pct(99)) for w in wins)
                + f"; WAL at the end: {lr.segments[0]:,} segments, {lr.segments[1]:,} empty",
            )
        )
    if res.latencies:
        rows.append(
            Row(
                "e2e latency",
                "setup",
                "concurrency 4",
                "0 ms receiver, drop mode, max_inflight 1,000, inotify + 0.5 s poll; "
                "from append's fsync return to the receiver reading the request "
                "(CLOCK_MONOTONIC in both processes); one append = one fsync; 50 MiB segments",
            )
        )
    if res.idle is not None:
        idle = res.idle
        n = len(idle.idle_pct)
        rows.append(
            Row(
                "e2e idle cost",
                "CPU%, no writes",
                f"{statistics.median(idle.idle_pct):.2f} %",
                f"% of one core, median of {n} x {idle.window_s:g} s ("
                + " / ".join(f"{v:.2f}" for v in idle.idle_pct)
                + f"); idle RSS {mib(idle.idle_rss_kib)}",
            )
        )
        rows.append(
            Row(
                "e2e idle cost",
                f"CPU%, {s.idle_rate:,.0f} events/s",
                f"{statistics.median(idle.loaded_pct):.1f} %",
                f"median of {n} x {idle.window_s:g} s ("
                + " / ".join(f"{v:.1f}" for v in idle.loaded_pct)
                + f"); wrote {idle.write_rate:,.0f}/s; WAL {idle.segments[0]} segments, "
                f"{idle.segments[1]} empty",
            )
        )
        if idle.leftover_pct:
            rows.append(
                Row(
                    "e2e idle cost",
                    f"CPU%, same + {LEFTOVER_EMPTY_SEGMENTS:,} empty segs",
                    f"{statistics.median(idle.leftover_pct):.1f} %",
                    f"median of {len(idle.leftover_pct)} x {idle.window_s:g} s ("
                    + " / ".join(f"{v:.1f}" for v in idle.leftover_pct)
                    + f"); {LEFTOVER_EMPTY_SEGMENTS:,} empty segments older than the active one "
                    f"added (as rotations leave them); in all delivered {idle.delivered:,}/"
                    f"{idle.written:,}, dropped {idle.dropped:,}",
                )
            )
    groups: dict[tuple[str, int], list[MemResult]] = {}
    for m in res.memory:
        groups.setdefault((m.mode, m.max_inflight), []).append(m)
    for (mode, mi), ms in groups.items():
        hwm = statistics.median(m.hwm_kib for m in ms)
        m = sorted(ms, key=lambda x: x.hwm_kib)[(len(ms) - 1) // 2]  # the median run
        if mode == "drop":
            how = "read it all"
            speed = f" ({m.lines_read / m.seconds:,.0f}/s incl. start-up)" if m.seconds else ""
        else:
            how, speed = "then reading paused", ""
        state = how if m.finished else f"stopped at the {m.seconds:.0f} s bound"
        each = f"median of {len(ms)} (" + " / ".join(mib(x.hwm_kib) for x in ms) + "); "
        rows.append(
            Row(
                f"e2e memory, {mode} mode",
                f"peak RSS, max_inflight {mi:,}",
                mib(hwm),
                f"VmHWM, {each if len(ms) > 1 else ''}read {m.lines_read:,}/{m.entries:,} "
                f"lines in {m.seconds:.1f} s{speed}, {state}; held {m.held:,}, dropped "
                f"{m.dropped:,}; VmRSS sampled max {mib(m.rss_sampled_max_kib)}, at end "
                f"{mib(m.rss_end_kib)}",
            )
        )
    if res.memory:
        idle_rss = f"{mib(res.idle.idle_rss_kib)}" if res.idle is not None else "n/a"
        rows.append(
            Row(
                "e2e memory",
                "backlog / sink",
                res.mem_wal,
                f"dead sink (connection refused; retries parked); idle daemon RSS {idle_rss}",
            )
        )
    for mode, results in res.bursts.items():
        dropped = statistics.median(b.dropped for b in results)
        detail = (
            f"median of {len(results)}; offered {results[0].offered:,}, held {results[0].held:,}, "
            f"read {results[0].lines_read:,} lines"
        )
        if mode == "block":
            detail += "; reading paused (the rest waits in the WAL)"
        rows.append(
            Row(
                f"e2e burst {NEXUS_BURST:,}, blocked rcv",
                f"{mode} mode, dropped",
                f"{dropped:,.0f}",
                detail + "; Nexus drops ~1,000 (queue 1,000)",
            )
        )
    for err in res.errors:
        rows.append(Row("e2e ERROR", err.split(":", 1)[0], "failed", err.split(":", 1)[1][:300]))
    return rows


def run(*, quick: bool = False, runs: int | None = None) -> tuple[list[Row], Results]:
    """Measure everything; returns the rows and the raw results (``python -m bench``)."""
    res = measure(Settings.make(quick, runs))
    return rows_for(res), res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e")
    ap.add_argument("--quick", action="store_true", help="1 run per figure, shorter runs")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3; 1 with --quick)")
    args = ap.parse_args(argv)
    rows, res = run(quick=args.quick, runs=args.runs)
    mode = "quick" if args.quick else "full"
    print_table(f"e2e ({mode}, {res.seconds:.0f} s)", rows)
    print(res.machine_note)
    if res.errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
