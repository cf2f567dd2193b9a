"""f. Cursors: what a sink reading the WAL through its own cursor costs the other sinks.

Every sink has its own cursor (scanner and saved position); the cursors share the watcher,
the directory listing and the parsed lines (``eventsinkd/wal/reading.py``). Throughout:
``overflow: block``, default ``max_inflight`` 1,000 and sink concurrency (``auto``), 0 ms receivers
(``bench/receiver.py``), dead sinks pointed at a port of 127.0.0.1 where nothing listens.

1. ``beside``: a healthy sink's events/s, a pre-written WAL handed over at once and timed to
   the receiver (``throughput.feed``), with a dead sink beside it (after the warm-up it is
   paused and its cursor waits with 1,000 events held), against the same sink alone. Both
   daemons run side by side and their runs alternate, so both see the same machine.
2. ``catch-up``: two sinks (``start_at: end``) tail a live stream, 1,000 appends/s, over a
   pre-written backlog (``bench/walgen.py``'s, hard-linked into the WAL directory); a third
   sink is added by a reload (SIGHUP) with ``start_at: beginning``. Its way through the
   backlog is timed from the SIGHUP: read = its cursor's read position in ``/status``
   (polled every 0.1 s) past the backlog's last line; delivered = the backlog at its own
   receiver. Done twice: with the sink delivering ("delivering") and with a filter that
   accepts nothing ("reading only": the reading rate alone). The tailing sinks' latency,
   from an append's fsync to its arrival (as ``latency`` measures it), pooled over both, in
   a window before the reload and while the third sink catches up.
3. ``memory``: 8 sinks, 2 of them dead, over ``memory``'s 1,000,000-entry backlog: the
   daemon's VmHWM (the kernel's peak) and its VmRSS sampled every 0.25 s, until the 6
   healthy sinks have delivered the whole backlog or a time bound (6,000,000 deliveries at
   a few thousand a second: the bound ends it; the rows say which).
4. ``reading CPU``: the daemon's CPU% of one core (utime+stime) at 1,000 appends/s with 1
   and with 4 sinks that keep up; each with sinks that deliver, and with sinks whose filter
   accepts nothing (then the CPU is reading only: waking, listing, reading, parsing).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Receiver
from bench.e2e.common import Daemon, Paced, dead_url, new_writer, paced_write, stage, wait_for
from bench.e2e.latency import fsync_to_arrival_ms, unique_at_least
from bench.e2e.throughput import MAX_RUN_EVENTS, MIN_RUN_EVENTS, TpRun, feed
from bench.walgen import cached_wal

if TYPE_CHECKING:
    from bench.e2e import Results

RATE = 1_000.0  # appends/s of the live stream (catch-up) and of the CPU measurement
WARM_EVENTS = 3_000  # the throughput warm-up, as in ``throughput``
DRAIN_S = 60.0  # the longest the tailing sinks may take to deliver what they are behind by
SLICE_S = 0.25  # the live stream during a catch-up is written in slices of this length
WATCH_S = 0.1  # how often the catch-up is sampled
MEM_ENTRIES = 1_000_000
MEM_HEALTHY, MEM_DEAD = 6, 2
CPU_SINKS = (1, 4)
# A filter that accepts no event (the writer's sources are never this). It was
# {"event_types": ["none"]} until status events made event_types a checked list: the reload
# that adds the catching-up sink was then refused, and the figure could not be made.
NOTHING = {"source": ["no source is named this"]}


def _sink_status(d: Daemon, names: list[str]) -> list[dict[str, Any]]:
    sinks: dict[str, dict[str, Any]] = d.status()["sinks"]
    return [sinks[n] for n in names]


def _all_delivered(d: Daemon, names: list[str], n: int) -> bool:
    return all(s["delivered"] >= n for s in _sink_status(d, names))


def _delivered(d: Daemon, names: list[str], n: int) -> Callable[[], bool]:
    """Whether every sink of ``names`` has delivered ``n`` events."""
    return lambda: _all_delivered(d, names, n)


def _check_clean(
    d: Daemon, names: list[str], written: int, what: str, missing_ok: bool = False
) -> None:
    """Every sink of ``names`` delivered all ``written`` events (or, if ``missing_ok``, not
    more), none dropped or failed."""
    for name, s in zip(names, _sink_status(d, names), strict=True):
        short = s["delivered"] < written and not missing_ok
        if short or s["delivered"] > written or s["dropped"] or s["failed"]:
            raise RuntimeError(
                f"{what}, sink {name}: written {written:,}, delivered {s['delivered']:,}, "
                f"dropped {s['dropped']:,}, failed {s['failed']:,}"
            )


# -- 1. a healthy sink beside a dead one -----------------------------------------------


@dataclass(slots=True)
class BesideResult:
    events: int = 0  # per run
    alone: list[TpRun] = field(default_factory=list)
    beside: list[TpRun] = field(default_factory=list)
    dead: dict[str, Any] = field(default_factory=dict)  # the dead sink's /status at the end
    loop: str = "?"

    @property
    def alone_rate(self) -> float:
        return statistics.median(r.rate for r in self.alone)

    @property
    def beside_rate(self) -> float:
        return statistics.median(r.rate for r in self.beside)

    @property
    def ratio(self) -> float:
        return self.beside_rate / self.alone_rate if self.alone_rate > 0 else 0.0


def beside_dead(rcv: Receiver, runs: int, target_s: float, work: Path) -> BesideResult:
    res = BesideResult()
    healthy = {"name": "healthy", "url": rcv.url}
    dead = {"name": "dead", "url": dead_url()}
    with (
        Daemon(work / "beside-alone", [healthy], overflow="block").start() as alone,
        Daemon(work / "beside-dead", [healthy, dead], overflow="block").start() as beside,
    ):
        res.loop = alone.loop()
        warm = feed(alone, rcv, alone.root, WARM_EVENTS, 60.0)
        feed(beside, rcv, beside.root, WARM_EVENTS, 60.0)
        wait_for(lambda: beside.sink("dead")["state"] == "paused", 30.0, "the dead sink to pause")
        n = round(warm.rate * target_s, -2)
        res.events = int(max(MIN_RUN_EVENTS, min(MAX_RUN_EVENTS, n)))
        timeout_s = max(30.0, 5 * res.events / max(warm.rate, 1.0))
        for i in range(runs):
            pair = ((alone, res.alone), (beside, res.beside))
            for d, out in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first
                out.append(feed(d, rcv, d.root, res.events, timeout_s))
        written = WARM_EVENTS + runs * res.events
        for d in (alone, beside):
            wait_for(_delivered(d, ["healthy"], written), 10.0, "the counts")
            _check_clean(d, ["healthy"], written, "beside a dead sink")
        res.dead = beside.sink("dead")
    return res


# -- 2. a lagging cursor catching up while two others tail ----------------------------


@dataclass(slots=True, frozen=True)
class Backlog:
    """A cached pre-written WAL, and where its entries are."""

    src: Path
    entries: int
    bytes: int
    before: dict[str, int]  # data segment -> entries in the data segments before it
    last: str  # the last segment with data

    @classmethod
    def cached(cls, entries: int) -> Backlog:
        src, info = cached_wal(entries)
        before: dict[str, int] = {}
        total, last = 0, ""
        for name in sorted(os.listdir(src), key=_ns):
            n = _count_lines(src / name)
            if n:
                before[name], total, last = total, total + n, name
        if total != entries:
            raise RuntimeError(f"{src}: {total:,} lines, expected {entries:,}")
        return cls(src, entries, info.bytes, before, last)

    def link_into(self, wal: Path) -> None:
        """The backlog's segments in ``wal`` (hard links: the daemon only reads them)."""
        wal.mkdir(mode=0o700, parents=True)
        for name in os.listdir(self.src):
            try:
                os.link(self.src / name, wal / name)
            except OSError:  # another filesystem
                shutil.copyfile(self.src / name, wal / name)

    def read_upto(self, position: str | None) -> int:
        """Entries of the backlog behind a cursor's read position (``segment:line``)."""
        segment, _, line = (position or "").rpartition(":")
        if segment in self.before:
            return self.before[segment] + int(line)
        if segment.startswith("wal-") and _ns(segment) > _ns(self.last):
            return self.entries  # in a later segment: the live stream
        return 0


def _ns(name: str) -> int:
    return int(name.removeprefix("wal-").partition(".")[0])


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            n += chunk.count(b"\n")
    return n


@dataclass(slots=True)
class CatchUpResult:
    variant: str  # "delivering" or "reading only"
    tails: int  # sinks tailing the live stream meanwhile (0: the cursor has the loop alone)
    backlog: int
    backlog_bytes: int
    bound_s: float
    read_s: float | None = None  # SIGHUP -> its read position past the backlog
    delivered_s: float | None = None  # SIGHUP -> the whole backlog at its receiver
    last_read: int = 0  # backlog entries read at the last sample
    last_received: int = 0  # ... and at its receiver
    last_s: float = 0.0  # ... taken this long after the SIGHUP
    received: int = 0  # at its receiver, at the end
    cpu_pct: float = 0.0  # the daemon's CPU% of one core from the SIGHUP to the end
    before_ms: list[float] = field(default_factory=list)  # tailing sinks, before the reload
    during_ms: list[float] = field(default_factory=list)  # ... while the third catches up
    written_before: int = 0
    written_during: int = 0
    rate_before: float = 0.0  # appends/s written
    rate_during: float = 0.0
    missing: int = 0  # tailing: written, never arrived
    lagging: dict[str, Any] = field(default_factory=dict)  # its /status at the end

    @property
    def read_rate(self) -> float:
        """Backlog entries per second through the cursor (so far, if it did not finish)."""
        if self.read_s:
            return self.backlog / self.read_s
        return self.last_read / self.last_s if self.last_s else 0.0

    @property
    def delivered_rate(self) -> float:
        """Backlog entries per second at its receiver (so far, if not all arrived)."""
        if self.delivered_s:
            return self.backlog / self.delivered_s
        return self.last_received / self.last_s if self.last_s else 0.0


class CatchUpWatch(threading.Thread):
    """Samples the added sink's cursor (``/status``) and receiver every ``WATCH_S``
    from the SIGHUP on; ``done`` is set when it is through the backlog (and, if it
    delivers, the backlog has arrived), or on an error."""

    def __init__(
        self, d: Daemon, sink: str, rcv: Receiver, backlog: Backlog, deliver: bool
    ) -> None:
        super().__init__(name="catch-up-watch", daemon=True)
        self.d, self.sink, self.rcv, self.backlog, self.deliver = d, sink, rcv, backlog, deliver
        self.base = rcv.stats()["requests"]
        self.t0 = 0.0
        self.done = threading.Event()
        self.halt = threading.Event()
        self.read_s: float | None = None
        self.delivered_s: float | None = None
        self.last_read = 0
        self.last_received = 0
        self.last_s = 0.0
        self.error: BaseException | None = None

    def begin(self, t0: float) -> None:
        self.t0 = t0
        self.start()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self._sample()
                if self.read_s is not None and (self.delivered_s is not None or not self.deliver):
                    break
                self.halt.wait(WATCH_S)
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            self.error = exc
        finally:
            self.done.set()

    def _sample(self) -> None:
        sink = self.d.status()["sinks"].get(self.sink)
        got = self.rcv.stats()["requests"] - self.base
        now = time.monotonic() - self.t0
        if sink is not None:  # the reload has added it
            self.last_read, self.last_s = self.backlog.read_upto(sink["cursor"]["read"]), now
            self.last_received = min(got, self.backlog.entries)
            if self.read_s is None and self.last_read >= self.backlog.entries:
                self.read_s = now
        if self.delivered_s is None and got >= self.backlog.entries:
            self.delivered_s = now

    def finish(self) -> None:
        self.halt.set()
        self.join(10.0)
        if self.error is not None:
            raise RuntimeError(f"watching the catch-up: {self.error}") from self.error


def catch_up(
    tails: list[Receiver],
    lag_rcv: Receiver,
    backlog: Backlog,
    reading_only: bool,
    window_s: float,
    bound_s: float,
    work: Path,
) -> CatchUpResult:
    variant = "reading only" if reading_only else "delivering"
    res = CatchUpResult(variant, len(tails), backlog.entries, backlog.bytes, bound_s)
    root = work / f"catchup-{'reading' if reading_only else 'delivering'}-{len(tails)}"
    backlog.link_into(root / "wal")
    tailing = [
        {"name": f"tail{i + 1}", "url": r.url, "start_at": "end"} for i, r in enumerate(tails)
    ]
    names = [str(s["name"]) for s in tailing]
    lagging: dict[str, Any] = {"name": "lagging", "url": lag_rcv.url, "start_at": "beginning"}
    if reading_only:
        lagging["filter"] = NOTHING
    with Daemon(root, tailing, wal=root / "wal", overflow="block").start() as d:
        w = new_writer(d.wal)
        bases = [r.stats()["unique"] for r in tails]
        written = 0

        def tails_have_all() -> bool:
            return all(unique_at_least(r, b + written)() for r, b in zip(tails, bases, strict=True))

        warm = paced_write(w, 50, 0.4)  # the first connections, the watcher
        written += len(warm.fsynced)
        wait_for(tails_have_all, 10.0, "the warm-up at the tailing receivers")
        before = paced_write(w, RATE, window_s)
        written += len(before.fsynced)
        wait_for(tails_have_all, 10.0, "the tailing receivers before the reload")
        watch = CatchUpWatch(d, "lagging", lag_rcv, backlog, deliver=not reading_only)
        during: list[Paced] = []
        c0, t0 = d.cpu_s(), time.monotonic()
        d.reload([*tailing, lagging])
        watch.begin(t0)
        try:
            while not watch.done.is_set() and time.monotonic() - t0 < bound_s:
                during.append(paced_write(w, RATE, SLICE_S))
        finally:
            watch.finish()
        res.cpu_pct = (d.cpu_s() - c0) / (time.monotonic() - t0) * 100
        res.lagging = d.sink("lagging")
        w.close()
        written += sum(len(p.fsynced) for p in during)
        # Block mode: the tailing sinks deliver everything, however far behind the catch-up
        # left them; what has not arrived by then is counted missing (and shown).
        with contextlib.suppress(RuntimeError):
            wait_for(tails_have_all, DRAIN_S, "the last arrivals at the tailing receivers")
        with contextlib.suppress(RuntimeError):
            wait_for(_delivered(d, names, written), 5.0, "the tailing counts")
        res.read_s, res.delivered_s = watch.read_s, watch.delivered_s
        res.last_read, res.last_s = watch.last_read, watch.last_s
        res.last_received = watch.last_received
        res.received = lag_rcv.stats()["requests"] - watch.base
        _check_clean(d, names, written, f"catch-up ({variant})", missing_ok=True)
    res.written_before = len(before.fsynced)
    res.rate_before = before.rate
    res.written_during = sum(len(p.fsynced) for p in during)
    res.rate_during = res.written_during / max(1e-9, sum(p.seconds for p in during))
    for r in tails:
        arrivals: dict[str, int] = r.stats(arrivals=True)["arrivals"]
        res.before_ms += fsync_to_arrival_ms(before, arrivals)
        for p in during:
            res.during_ms += fsync_to_arrival_ms(p, arrivals)
    expected = len(tails) * (res.written_before + res.written_during)
    res.missing = expected - len(res.before_ms) - len(res.during_ms)
    shutil.rmtree(root / "wal", ignore_errors=True)  # links and the live stream's segments
    return res


# -- 3. memory with 8 sinks, 2 of them dead --------------------------------------------


@dataclass(slots=True)
class ManySinksMem:
    entries: int
    bound_s: float
    seconds: float = 0.0
    finished: bool = False  # the healthy sinks delivered the whole backlog
    hwm_kib: int = 0  # VmHWM: the kernel's peak
    rss_sampled_max_kib: int = 0
    rss_end_kib: int = 0
    lines_read: int = 0
    delivered: list[int] = field(default_factory=list)  # per healthy sink
    healthy_held: list[int] = field(default_factory=list)
    dead_held: list[int] = field(default_factory=list)
    dead_states: list[str] = field(default_factory=list)


def many_sinks_memory(rcv: Receiver, bound_s: float, work: Path) -> ManySinksMem:
    wal_dir, _ = cached_wal(MEM_ENTRIES)
    res = ManySinksMem(MEM_ENTRIES, bound_s)
    healthy = [f"healthy{i + 1}" for i in range(MEM_HEALTHY)]
    dead = [f"dead{i + 1}" for i in range(MEM_DEAD)]
    sinks = [{"name": n, "url": rcv.url} for n in healthy]
    sinks += [{"name": n, "url": dead_url()} for n in dead]
    d = Daemon(work / "mem-8-sinks", sinks, wal=wal_dir, overflow="block", shutdown_timeout_s=0.5)
    with d:
        t0 = time.monotonic()
        d.start(wait=False)
        while time.monotonic() - t0 < bound_s:
            time.sleep(0.25)  # the sampling period
            d.check_alive()
            with contextlib.suppress(OSError):
                res.rss_sampled_max_kib = max(res.rss_sampled_max_kib, d.mem_kib()["VmRSS"])
            try:
                if _all_delivered(d, healthy, MEM_ENTRIES):
                    res.finished = True
                    break
            except (OSError, RuntimeError, http.client.HTTPException):
                continue  # not listening yet
        res.seconds = time.monotonic() - t0
        mem = d.mem_kib()
        res.rss_end_kib, res.hwm_kib = mem["VmRSS"], mem["VmHWM"]
        res.rss_sampled_max_kib = max(res.rss_sampled_max_kib, res.rss_end_kib)
        st = d.status()
        res.lines_read = st["reader"]["lines"]
        for n in healthy:
            res.delivered.append(st["sinks"][n]["delivered"])
            res.healthy_held.append(st["sinks"][n]["queue_depth"])
        for n in dead:
            res.dead_held.append(st["sinks"][n]["queue_depth"])
            res.dead_states.append(st["sinks"][n]["state"])
    return res


# -- 4. reading CPU with 1 and 4 sinks that keep up -----------------------------------


@dataclass(slots=True)
class CpuCombo:
    sinks: int
    reading_only: bool
    window_s: float
    pct: list[float] = field(default_factory=list)  # one per window
    write_rate: float = 0.0
    written: int = 0
    delivered: int = 0  # the least any sink delivered

    @property
    def median_pct(self) -> float:
        return statistics.median(self.pct)


def reading_cpu(
    rcv: Receiver, n: int, reading_only: bool, windows: int, window_s: float, work: Path
) -> CpuCombo:
    res = CpuCombo(n, reading_only, window_s)
    names = [f"s{i + 1}" for i in range(n)]
    sinks: list[dict[str, Any]] = [{"name": name, "url": rcv.url} for name in names]
    if reading_only:
        for s in sinks:
            s["filter"] = NOTHING
    root = work / f"cpu-{n}-{'reading' if reading_only else 'delivering'}"
    with Daemon(root, sinks, overflow="block").start() as d:
        w = new_writer(d.wal)

        def kept_up() -> bool:
            st = d.status()
            if st["lag"]["bytes_behind"] or st["reader"]["lines"] < res.written:
                return False
            return reading_only or all(st["sinks"][m]["delivered"] >= res.written for m in names)

        warm = paced_write(w, 50, 0.4)  # the first connections, the watcher
        res.written += len(warm.fsynced)
        wait_for(kept_up, 10.0, "the warm-up")
        rates = []
        for _ in range(windows):
            pct, p = d.cpu_pct(lambda: paced_write(w, RATE, window_s))
            res.pct.append(pct)
            res.written += len(p.fsynced)
            rates.append(p.rate)
        w.close()
        res.write_rate = statistics.median(rates)
        wait_for(kept_up, 15.0, f"{n} sink(s) to have read (and delivered) everything")
        if reading_only:
            res.delivered = min(s["delivered"] for s in _sink_status(d, names))
        else:
            _check_clean(d, names, res.written, f"reading CPU, {n} sinks")
            res.delivered = res.written
    return res


# -- the figure ----------------------------------------------------------------------


@dataclass(slots=True)
class CursorResults:
    beside: BesideResult | None = None
    catch_ups: list[CatchUpResult] = field(default_factory=list)
    memory: ManySinksMem | None = None
    cpu: list[CpuCombo] = field(default_factory=list)


def measure_beside(res: Results, work: Path) -> None:
    s = res.settings
    with Receiver(0) as rcv, stage("cursors: a healthy sink alone and beside a dead one"):
        res.cursors.beside = beside_dead(rcv, s.runs, s.cur_run_s, work)


def measure_catch_up(res: Results, work: Path) -> None:
    s = res.settings
    backlog = Backlog.cached(s.cur_backlog)
    with (
        Receiver(0, record_arrivals=True) as tail1,
        Receiver(0, record_arrivals=True) as tail2,
        Receiver(0) as lag_rcv,
    ):
        # The added cursor with the loop to itself, then beside two tailing sinks.
        for tails, reading_only in (([], True), ([tail1, tail2], True), ([tail1, tail2], False)):
            what = "reading only" if reading_only else "delivering"
            with stage(f"cursors: catch-up of {backlog.entries:,} entries, {what}"):
                res.cursors.catch_ups.append(
                    catch_up(
                        tails,
                        lag_rcv,
                        backlog,
                        reading_only,
                        s.cur_window_s,
                        s.cur_bound_s,
                        work,
                    )
                )


def measure_memory(res: Results, work: Path) -> None:
    with Receiver(0) as rcv, stage(f"cursors: memory, {MEM_HEALTHY + MEM_DEAD} sinks"):
        res.cursors.memory = many_sinks_memory(rcv, res.settings.cur_mem_bound_s, work)


def measure_cpu(res: Results, work: Path) -> None:
    s = res.settings
    window_s = s.cur_cpu_s / s.cur_cpu_windows
    with Receiver(0) as rcv:
        for reading_only in (False, True):
            for n in CPU_SINKS:
                what = "reading only" if reading_only else "delivering"
                with stage(f"cursors: CPU at {RATE:,.0f} appends/s, {n} sink(s), {what}"):
                    res.cursors.cpu.append(
                        reading_cpu(rcv, n, reading_only, s.cur_cpu_windows, window_s, work)
                    )
