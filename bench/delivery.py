"""Delivery throughput: events per second from the engine to a local HTTP receiver.

    python -m bench.delivery            # full run, about 2 minutes
    python -m bench.delivery --quick    # about half a minute
    python -m bench.delivery --profile  # cProfile of the engine, 0 ms receiver, concurrency 64
    python -m bench.delivery --asyncio  # the engine on asyncio's own loop instead of uvloop

Everything stays on 127.0.0.1. The receiver (``bench/receiver.py``) is a separate process
answering ``204`` after 0 ms or 10 ms; the receiver, the load generator and the engine
(this process) share the machine's cores.

1. The receiver alone: a load generator in another process (aiohttp client, 64 keep-alive
   connections) hammers it for a few seconds. Its rate and the receiver's CPU time per
   request show how far the receiver is from being the bottleneck.
2. The engine: one sink pointing at the receiver, ``concurrency`` 1, 8 and 64, drop mode
   with ``max_inflight`` above N so nothing is dropped. Each run builds a fresh Engine,
   hands it N events in batches of 500 (synthetic entries, as in tests/test_delivery.py,
   built before the clock starts), waits for wait_idle(), and takes wall time and this
   process's CPU time (time.process_time()); delivered must equal N, at the engine and at
   the receiver. N is calibrated per cell by a warm-up so a run takes about ``--seconds``.
   The median of ``--runs`` runs is reported. Beside each cell, the bare aiohttp client
   (the load generator, no engine) with as many connections as the engine's concurrency:
   the ceiling of the HTTP client the engine uses.

Nexus's own in-process notifier (Go, v0.1.2), measured on this machine type, is printed
for comparison. The engine runs on uvloop, as ``eventsinkd run`` does when uvloop is
installed (it falls back to asyncio's loop otherwise, and says so); ``--asyncio`` runs it on
asyncio's own loop for comparison. The bare client runs on the same loop as the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from bench import Row, machine_summary, nproc
from eventsinkd.config import EventsConfig
from eventsinkd.delivery.engine import Engine
from eventsinkd.metrics import Metrics
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.position import Position
from eventsinkd.wal.scanner import Batch, Record

# Nexus v0.1.2 internal/eventsink, one event at a time, measured on this machine type.
NEXUS_EVENTS_PER_S = {0: 7_800.0, 10: 93.0}
LATENCIES_MS = (0, 10)
CONCURRENCIES = (1, 8, 64)
BATCH_RECORDS = 500
MAX_EVENTS = 100_000  # max_inflight of the sink; N never exceeds it, so nothing is dropped
MIN_EVENTS = 50
RUN_TIMEOUT_S = 60.0  # one run never waits longer than this for wait_idle()
CHILD_START_TIMEOUT_S = 15.0
WAL_FILE = "wal-1.jsonl"
T = TypeVar("T")


# -- the receiver subprocess -----------------------------------------------------------


class Receiver:
    """``python -m bench.receiver`` as a child process; always terminated on exit."""

    def __init__(
        self,
        latency_ms: float,
        impl: str = "raw",
        *,
        record_arrivals: bool = False,
        max_seconds: float = 600.0,
    ) -> None:
        self.latency_ms = latency_ms
        self.impl = impl
        self.record_arrivals = record_arrivals
        self.max_seconds = max_seconds
        self.port = 0
        self.loop = "?"  # the receiver's event loop: asyncio, or uvloop when installed
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Receiver:
        cmd = [
            sys.executable,
            "-m",
            "bench.receiver",
            "--impl",
            self.impl,
            "--latency-ms",
            str(self.latency_ms),
            "--max-seconds",
            str(self.max_seconds),
        ]
        if self.record_arrivals:
            cmd.append("--record-arrivals")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.port, self.loop = self._read_port()
        except BaseException:
            self.close()
            raise
        return self

    def _read_port(self) -> tuple[int, str]:
        assert self.proc is not None and self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(CHILD_START_TIMEOUT_S)
        if not line or not line[0].startswith("PORT "):
            got = line[0].strip() if line else "nothing"
            raise RuntimeError(f"receiver did not report its port (got {got!r})")
        _, port, loop = line[0].split()
        return int(port), loop

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()  # the receiver exits on stdin EOF...
        proc.terminate()  # ...and on SIGTERM
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def receiver_doc(port: int, query: str = "") -> dict[str, Any]:
    """The receiver's ``GET /__stats`` document (``query`` e.g. ``"arrivals=1"``)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    target = "/__stats" + (f"?{query}" if query else "")
    try:
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    doc: dict[str, Any] = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return doc


async def receiver_stats(port: int) -> tuple[int, float]:
    """(POSTs answered, receiver CPU seconds) from the receiver's ``GET /__stats``."""
    doc = await receiver_doc(port)
    return int(doc["requests"]), float(doc["cpu_s"])


# -- 1. the receiver alone -------------------------------------------------------------


@dataclass(slots=True)
class Capacity:
    impl: str
    loop: str  # the receiver's event loop
    latency_ms: int
    rate: float  # requests/s the load generator got answered
    receiver_cpu_us: float  # receiver CPU per request
    loadgen_cpu_us: float  # load generator CPU per request
    errors: int


def load_receiver(
    rcv: Receiver, connections: int, seconds: float, *, uvloop: bool = False
) -> Capacity:
    """The load generator (a separate process) against ``rcv`` for ``seconds``."""
    before = asyncio.run(receiver_stats(rcv.port))
    cmd = [sys.executable, "-m", "bench.receiver", "--load", rcv.url]
    cmd += ["--connections", str(connections), "--seconds", str(seconds), "--warmup", "0.5"]
    cmd += ["--uvloop"] if uvloop else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stderr}")
    after = asyncio.run(receiver_stats(rcv.port))
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    answered = max(1, after[0] - before[0])  # includes the warm-up, like the receiver CPU
    return Capacity(
        impl=rcv.impl,
        loop=rcv.loop,
        latency_ms=int(rcv.latency_ms),
        rate=float(doc["rate"]),
        receiver_cpu_us=(after[1] - before[1]) / answered * 1e6,
        loadgen_cpu_us=float(doc["cpu_s"]) / max(1, int(doc["requests"])) * 1e6,
        errors=int(doc["errors"]),
    )


def receiver_alone(
    impl: str, latency_ms: int, seconds: float, connections: int, *, uvloop: bool = False
) -> Capacity:
    with Receiver(latency_ms, impl) as rcv:
        return load_receiver(rcv, connections, seconds, uvloop=uvloop)


# -- 2. the engine ---------------------------------------------------------------------


def _record(entry: Entry, line: int) -> Record:
    """A Record of WAL_FILE (``Record(entry, segment, line)``, or the older
    ``Record(entry, position)``)."""
    if "segment" in getattr(Record, "_fields", ()):
        return Record(entry, WAL_FILE, line)
    return cast(Any, Record)(entry, Position(WAL_FILE, line))  # type: ignore[no-any-return]


def make_batches(n: int, run_id: int) -> list[Batch]:
    """N synthetic data entries (as tests/test_delivery.py builds them), in batches."""
    batches: list[Batch] = []
    recs: list[Record] = []
    for i in range(n):
        entry = Entry(
            payload_id=f"r{run_id}-p{i:07d}",
            idempotency_key=f"idem-{run_id}-{i}",
            status="PENDING",
            timestamp="2026-04-10T12:34:56.1234567Z",
            source="claude-desktop",
            destination="sqlite",
            subject="user:alice",
            actor_type="user",
            actor_id="alice",
            payload={"content": f"memory <{i}> & more"},
            entry_type="",
            monotonic_seq=i,
        )
        recs.append(_record(entry, i + 1))
        if len(recs) == BATCH_RECORDS or i == n - 1:
            batches.append(Batch(recs, Position(WAL_FILE, i + 1)))
            recs = []
    return batches


@dataclass(slots=True)
class Sample:
    events: int
    wall_s: float
    cpu_s: float  # this process (the engine)
    receiver_cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(slots=True)
class Cell:
    latency_ms: int
    concurrency: int
    events: int = 0
    samples: list[Sample] = field(default_factory=list)
    client: Capacity | None = None  # the bare aiohttp client (load generator), same connections

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def cpu_ms_per_1000(self) -> float:
        return statistics.median(s.cpu_s / s.events * 1e6 for s in self.samples)

    @property
    def receiver_cpu_ms_per_1000(self) -> float:
        return statistics.median(s.receiver_cpu_s / s.events * 1e6 for s in self.samples)

    @property
    def wall_s(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)


def events_config(url: str, concurrency: int) -> EventsConfig:
    return EventsConfig.model_validate(
        {
            "max_inflight": MAX_EVENTS,
            "overflow": "drop",
            "sinks": [{"name": "bench", "url": url, "concurrency": concurrency}],
        }
    )


async def deliver(url: str, port: int, concurrency: int, batches: list[Batch]) -> Sample:
    """One run: a fresh Engine, the batches handed over, timed until wait_idle()."""
    n = sum(len(b.records) for b in batches)
    engine = Engine(events_config(url, concurrency), Metrics(), lambda _pos: None)
    await engine.start()
    try:
        got_before, rcpu_before = await receiver_stats(port)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for batch in batches:
            await engine.handle(batch)
        await asyncio.wait_for(engine.wait_idle(), RUN_TIMEOUT_S)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        got_after, rcpu_after = await receiver_stats(port)
    finally:
        left = await engine.stop(5)
    stats = engine.sinks["bench"].stats
    if stats.delivered != n or stats.dropped or stats.failed or left:
        raise RuntimeError(
            f"delivered {stats.delivered} of {n} (dropped {stats.dropped}, "
            f"failed {stats.failed}, left {left})"
        )
    if got_after - got_before != n:
        raise RuntimeError(f"the receiver answered {got_after - got_before} requests, not {n}")
    return Sample(n, wall, cpu, rcpu_after - rcpu_before)


async def calibrate(url: str, port: int, concurrency: int, target_s: float) -> int:
    """Warm up (imports, first connections) and pick N so a run takes about ``target_s``."""
    n = max(20, 4 * concurrency)
    spent = 0.0
    rate = 0.0
    for _ in range(12):  # doubling warm-ups; bounded
        sample = await deliver(url, port, concurrency, make_batches(n, -1))
        spent += sample.wall_s
        rate = sample.rate
        if sample.wall_s >= min(0.4, target_s / 4) or spent >= target_s / 2:
            break
        n = min(MAX_EVENTS, n * 2)
    return max(MIN_EVENTS, min(MAX_EVENTS, round(rate * target_s / 10) * 10))


async def measure_cell(
    rcv: Receiver, concurrency: int, runs: int, target_s: float, events: int | None
) -> Cell:
    cell = Cell(int(rcv.latency_ms), concurrency)
    if events:  # a fixed N: still warm up (imports, first connections) once
        await deliver(rcv.url, rcv.port, concurrency, make_batches(min(events, 200), -1))
    cell.events = events or await calibrate(rcv.url, rcv.port, concurrency, target_s)
    for run_id in range(runs):
        batches = make_batches(cell.events, run_id)
        cell.samples.append(await deliver(rcv.url, rcv.port, concurrency, batches))
    return cell


# -- output ----------------------------------------------------------------------------


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], left: int = 1) -> str:
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        out = [
            f"{c:<{w}}" if i < left or i == len(cells) - 1 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def capacity_table(caps: list[Capacity], connections: int, client_loop: str) -> str:
    rows = [
        (
            f"{c.impl} ({c.loop})",
            f"{c.latency_ms} ms",
            f"{c.rate:,.0f}",
            f"{c.receiver_cpu_us:,.0f}",
            f"{1e6 / c.receiver_cpu_us:,.0f}" if c.receiver_cpu_us > 0 else "-",
            f"{c.loadgen_cpu_us:,.0f}",
            f"{c.errors}",
        )
        for c in caps
    ]
    headers = (
        "receiver",
        "latency",
        "req/s",
        "recv CPU us/req",
        "recv req/CPU-s",
        "loadgen CPU us/req",
        "errors",
    )
    title = (
        f"receiver alone: aiohttp load generator ({client_loop}), {connections} keep-alive "
        "connections, separate processes"
    )
    return f"{title}\n{_table(headers, rows, left=2)}"


def engine_table(cells: list[Cell], runs: int) -> str:
    rows = []
    for c in cells:
        nexus = NEXUS_EVENTS_PER_S[c.latency_ms]
        rates = " / ".join(f"{s.rate:,.0f}" for s in c.samples)
        rows.append(
            (
                f"{c.latency_ms} ms",
                f"{c.concurrency}",
                f"{c.events:,}",
                f"{c.rate:,.0f}",
                f"{c.cpu_ms_per_1000:,.0f}",
                f"{c.receiver_cpu_ms_per_1000:,.0f}",
                f"{c.wall_s:.2f}",
                f"{c.rate / nexus:.2f}x",
                f"{c.client.rate:,.0f}" if c.client else "-",
                f"{c.client.loadgen_cpu_us:,.0f}" if c.client else "-",
                rates,
            )
        )
    headers = (
        "receiver",
        "conc",
        "events N",
        "events/s",
        "CPU ms/1k ev",
        "recv CPU ms/1k",
        "wall s",
        "vs Nexus",
        "bare aiohttp req/s",
        "its CPU ms/1k",
        f"events/s of each run (median of {runs})",
    )
    return _table(headers, rows, left=1)


def nexus_lines() -> str:
    return (
        "Nexus v0.1.2 in-process notifier (Go), same machine type, one event at a time:\n"
        f"  ~{NEXUS_EVENTS_PER_S[0]:,.0f} events/s to a 0 ms receiver, "
        f"~{NEXUS_EVENTS_PER_S[10]:,.0f} events/s to a 10 ms receiver\n"
        "  ('vs Nexus' = engine events/s / the Nexus figure for the same receiver latency)\n"
        "'bare aiohttp': the load generator (aiohttp client, no engine) against the same\n"
        "  receiver with as many connections as the engine's concurrency: the client's ceiling"
    )


# -- profile ---------------------------------------------------------------------------


def profile(n: int, concurrency: int = 64, top: int = 30, loop: str = "uvloop") -> str:
    """cProfile of one engine run (0 ms receiver): own time, then cumulative time."""
    with Receiver(0) as rcv:

        async def go() -> Sample:
            await calibrate(rcv.url, rcv.port, concurrency, 1.0)  # warm up outside the profile
            batches = make_batches(n, 0)
            prof.enable()
            try:
                return await deliver(rcv.url, rcv.port, concurrency, batches)
            finally:
                prof.disable()

        prof = cProfile.Profile()
        sample = run_on(loop, go())
    buf = io.StringIO()
    buf.write(
        f"cProfile: {n:,} events, 0 ms receiver, concurrency {concurrency}, {loop}: "
        f"{sample.rate:,.0f} events/s under the profiler\n"
    )
    stats = pstats.Stats(prof, stream=buf)
    buf.write(_own_time_by_package(stats, n))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


PACKAGES = (
    ("/eventsinkd/", "eventsinkd"),
    ("/prometheus_client/", "prometheus_client"),
    ("/aiohttp/", "aiohttp"),
    ("/multidict/", "multidict/yarl"),
    ("/yarl/", "multidict/yarl"),
    ("/asyncio/", "asyncio"),
    ("/bench/", "bench harness"),
)


def _own_time_by_package(stats: pstats.Stats, n: int) -> str:
    """Profiled own time summed per package, in microseconds per event."""
    totals: dict[str, float] = {}
    for (filename, _line, _func), row in stats.stats.items():  # type: ignore[attr-defined]
        group = "C builtins" if filename == "~" else "other Python"
        for marker, name in PACKAGES:
            if marker in filename:
                group = name
                break
        totals[group] = totals.get(group, 0.0) + row[2]
    whole = sum(totals.values()) or 1.0
    lines = ["own time by package (under cProfile, which inflates Python-level calls):"]
    for name, secs in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<18} {secs / n * 1e6:7.1f} us/event  {secs / whole:5.1%}")
    return "\n".join(lines) + "\n\n"


# -- main ------------------------------------------------------------------------------


def _machine_busy_s() -> float | None:
    """CPU seconds all processes have run since boot (/proc/stat), or None if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    return sum(fields[:3]) / ticks  # user + nice + system (not irq, softirq, steal, idle)


def _own_cpu_s() -> float:
    """CPU seconds of this process and its (waited-for) children: receivers, load generators."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"... {name}", end="", flush=True, file=sys.stderr)
    try:
        yield
    finally:
        print(f" ({time.monotonic() - started:.1f} s)", flush=True, file=sys.stderr)


def resolve_loop(use_asyncio: bool = False) -> str:
    """The loop the engine runs on: uvloop like ``eventsinkd run``, unless asked for asyncio's
    own loop or uvloop is not installed (the daemon then falls back to asyncio's loop too)."""
    if use_asyncio:
        return "asyncio"
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_on(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on ``loop`` ("uvloop" or "asyncio"), without touching the global
    event loop policy (the other benchmarks in the same process keep asyncio's loop)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


@dataclass(slots=True)
class Report:
    loop: str
    receiver: str
    connections: int
    runs: int
    quick: bool
    caps: list[Capacity] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    seconds: float = 0.0
    machine_note: str = ""


def measure_all(
    *,
    quick: bool = False,
    runs: int | None = None,
    seconds: float | None = None,
    events: int | None = None,
    connections: int = 64,
    receiver: str = "raw",
    loop: str = "uvloop",
) -> Report:
    """The receiver alone, then the engine in every cell (progress on stderr)."""
    rep = Report(loop, receiver, connections, runs or (1 if quick else 3), quick)
    target_s = seconds or (1.0 if quick else 4.0)
    load_s = 1.5 if quick else 3.0
    on_uvloop = loop == "uvloop"
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    busy_before, own_before = _machine_busy_s(), _own_cpu_s()

    impls = ("raw",) if quick else ("raw", "aiohttp")
    for impl in impls:
        for latency in LATENCIES_MS:
            with _stage(f"receiver alone: {impl}, {latency} ms"):
                rep.caps.append(
                    receiver_alone(impl, latency, load_s, connections, uvloop=on_uvloop)
                )

    for latency in LATENCIES_MS:
        with Receiver(latency, receiver) as rcv:
            for conc in CONCURRENCIES:
                with _stage(f"engine ({loop}): {latency} ms receiver, concurrency {conc}"):
                    cell = run_on(loop, measure_cell(rcv, conc, rep.runs, target_s, events))
                with _stage(f"bare aiohttp client: {latency} ms receiver, {conc} connections"):
                    cell.client = load_receiver(rcv, conc, load_s, uvloop=on_uvloop)
                rep.cells.append(cell)

    rep.seconds = time.monotonic() - started
    busy_after, own = _machine_busy_s(), _own_cpu_s() - own_before
    others = ""
    if busy_before is not None and busy_after is not None:
        avail = rep.seconds * nproc()
        other_s = max(0.0, busy_after - busy_before - own)
        others = (
            f"; other processes used {other_s:.0f} CPU-s of the {avail:.0f} available "
            f"({other_s / avail:.0%})"
        )
    rep.machine_note = (
        f"this benchmark used {own:.0f} CPU-s{others}; 1-min load average {load_before:.2f} "
        f"at the start, {os.getloadavg()[0]:.2f} at the end (other work on the machine skews "
        "events/s more than CPU per event)"
    )
    return rep


def print_report(rep: Report) -> None:
    quick = ", quick" if rep.quick else ""
    print(f"\n== delivery ({rep.seconds:.0f} s{quick}; engine on {rep.loop})")
    print(machine_summary())
    print(
        f"all on 127.0.0.1; receiver, load generator and engine are separate processes "
        f"sharing the same {nproc()} cores"
    )
    print(rep.machine_note)
    print()
    print(capacity_table(rep.caps, rep.connections, rep.loop))
    print()
    print(
        f"engine on {rep.loop} -> {rep.receiver} receiver: one sink, drop mode, "
        f"max_inflight {MAX_EVENTS:,}, batches of {BATCH_RECORDS}; "
        "CPU = time.process_time() of the engine's process"
    )
    print(engine_table(rep.cells, rep.runs))
    print()
    print(nexus_lines())
    sys.stdout.flush()


def summary_rows(rep: Report) -> list[Row]:
    """The figures ``python -m bench`` puts in its summary table."""
    label = f"delivery engine ({rep.loop})"
    rows = []
    for cap in rep.caps:
        if cap.impl != rep.receiver:
            continue
        per_cpu = f"{1e6 / cap.receiver_cpu_us:,.0f}" if cap.receiver_cpu_us > 0 else "-"
        rows.append(
            Row(
                "delivery receiver alone",
                f"{cap.latency_ms} ms receiver req/s",
                f"{cap.rate:,.0f}",
                f"{rep.connections} connections ({cap.loop}); {cap.receiver_cpu_us:,.0f} us "
                f"CPU/req = {per_cpu} req per receiver CPU-second",
            )
        )
    for c in rep.cells:
        nexus = NEXUS_EVENTS_PER_S[c.latency_ms]
        rates = " / ".join(f"{s.rate:,.0f}" for s in c.samples)
        client = f"; bare client {c.client.rate:,.0f} req/s" if c.client else ""
        rows.append(
            Row(
                label,
                f"{c.latency_ms} ms, conc {c.concurrency} events/s",
                f"{c.rate:,.0f}",
                f"{c.rate / nexus:.2f}x Nexus; {c.cpu_ms_per_1000:,.0f} CPU-ms/1k ev; "
                f"median of {len(c.samples)} ({rates}){client}",
            )
        )
    return rows


def run(
    *,
    quick: bool = False,
    runs: int | None = None,
    use_asyncio: bool = False,
) -> tuple[list[Row], Report]:
    """Measure and print the detailed report; the summary rows and the report (for
    ``python -m bench``)."""
    rep = measure_all(quick=quick, runs=runs, loop=resolve_loop(use_asyncio))
    print_report(rep)
    return summary_rows(rep), rep


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.delivery")
    ap.add_argument("--quick", action="store_true", help="short runs, 1 run per cell")
    ap.add_argument("--runs", type=int, help="runs per cell (default 3; 1 with --quick)")
    ap.add_argument("--seconds", type=float, help="target seconds per run (default 4; 1 quick)")
    ap.add_argument("--events", type=int, help="fixed N per run instead of calibrating")
    ap.add_argument("--connections", type=int, default=64, help="load generator connections")
    ap.add_argument("--receiver", choices=("raw", "aiohttp"), default="raw")
    ap.add_argument("--profile", action="store_true", help="cProfile 0 ms / concurrency 64")
    ap.add_argument(
        "--asyncio",
        action="store_true",
        help="engine and bare client on asyncio's own loop (default: uvloop, as the daemon)",
    )
    args = ap.parse_args(argv)
    loop = resolve_loop(args.asyncio)
    if not args.asyncio and loop != "uvloop":
        print("uvloop is not installed: the engine runs on asyncio's loop", file=sys.stderr)
    if args.profile:
        print(profile(args.events or 20_000, loop=loop))
        return
    if args.events is not None and not MIN_EVENTS <= args.events <= MAX_EVENTS:
        ap.error(f"--events must be within {MIN_EVENTS}..{MAX_EVENTS}")
    rep = measure_all(
        quick=args.quick,
        runs=args.runs,
        seconds=args.seconds,
        events=args.events,
        connections=args.connections,
        receiver=args.receiver,
        loop=loop,
    )
    print_report(rep)


if __name__ == "__main__":
    main()
