"""The end-to-end figures as rows of the results table, in the order they are measured."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from bench import NEXUS_EVENTS_PER_S, Row, median_of, percentile
from bench.e2e.adaptive import adaptive_rows
from bench.e2e.burst import NEXUS_BURST, median_dropped
from bench.e2e.cursors import MEM_DEAD, MEM_HEALTHY, RATE, CatchUpResult
from bench.e2e.dirsize import LEFTOVER
from bench.e2e.dirsize import RATE as DIR_RATE
from bench.e2e.idle import LEFTOVER_EMPTY_SEGMENTS
from bench.e2e.memory import MemResult
from bench.e2e.statuses import status_rows
from bench.e2e.targets import target_rows
from bench.e2e.transports import POLL_FAST_S, POLL_SLOW_S, TrCell

if TYPE_CHECKING:
    from bench.e2e import Results


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


def _ms(v: float) -> str:
    return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"


def throughput_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
    runs_of = f"median of {res.settings.runs}"
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
    return rows


def latency_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
    for lr in res.latencies:
        label = f"e2e latency {lr.rate:,}/s"
        lat = lr.latencies_ms
        if not lat:
            rows.append(Row(label, "append->arrival", "n/a", "nothing arrived"))
            continue
        written = sum(w.written for w in lr.windows)
        missing = written - len(lat)
        per_batch = written / max(1, sum(w.appends for w in lr.windows))
        rate = median_of(lr.windows, lambda w: w.write_rate)
        figures = " / ".join(_ms(percentile(lat, p)) for p in (50, 90, 99))
        rows.append(
            Row(
                label,
                "p50 / p90 / p99 / max ms",
                f"{figures} / {_ms(max(lat))}",
                f"all {len(lat):,} entries of {len(lr.windows)} x {res.settings.lat_window_s:g} s; "
                f"wrote {rate:,.0f}/s, {per_batch:.1f} entries/batch, "
                f"{lr.files_per_s:,.0f} new files/s; {len(lat):,}/{written:,} arrived"
                f"{f' ({missing:,} MISSING)' if missing else ''}; dropped {lr.dropped:,}; "
                f"min {_ms(min(lat))} ms; p99 of each window: "
                + " / ".join(_ms(w.pct(99)) for w in lr.windows if w.latencies_ms)
                + f"; WAL at the end: {lr.segments[0]:,} segments, {lr.segments[1]:,} empty",
            )
        )
    if res.latencies:
        rows.append(
            Row(
                "e2e latency",
                "setup",
                "defaults",
                "0 ms receiver, default sink settings, inotify + 0.5 s poll; Nexus's "
                "group commit (4 writers, 500 us batching, 1 MiB segments, a new empty file per "
                "batch in the last fifth of each); from the batch's fsync to the receiver "
                "reading the request (CLOCK_MONOTONIC in both processes)",
            )
        )
    return rows


def idle_rows(res: Results) -> list[Row]:
    idle = res.idle
    if idle is None:
        return []
    n = len(idle.idle_pct)
    rows = [
        Row(
            "e2e idle cost",
            "CPU%, no writes",
            f"{statistics.median(idle.idle_pct):.2f} %",
            f"% of one core, median of {n} x {idle.window_s:g} s ("
            + " / ".join(f"{v:.2f}" for v in idle.idle_pct)
            + f"); idle RSS {mib(idle.idle_rss_kib)}",
        ),
        Row(
            "e2e idle cost",
            f"CPU%, {res.settings.idle_rate:,.0f} events/s",
            f"{statistics.median(idle.loaded_pct):.1f} %",
            f"median of {n} x {idle.window_s:g} s ("
            + " / ".join(f"{v:.1f}" for v in idle.loaded_pct)
            + f"); wrote {idle.write_rate:,.0f}/s; WAL {idle.segments[0]} segments, "
            f"{idle.segments[1]} empty",
        ),
    ]
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
    return rows


def dirsize_rows(res: Results) -> list[Row]:
    ds = res.dirsize
    if ds is None:
        return []
    rows: list[Row] = []
    label = "e2e directory size"
    if ds.runs:
        empty, full = ds.median_pct(False), ds.median_pct(True)

        def each(leftover: bool) -> str:
            return " / ".join(
                f"{p:.1f}" for r in ds.runs if bool(r.leftover) == leftover for p in r.pct
            )

        written = sum(r.written for r in ds.runs)
        delivered = sum(r.delivered for r in ds.runs)
        rows += [
            Row(
                label,
                f"CPU%, {DIR_RATE}/s, empty dir",
                f"{empty:.1f} %",
                f"median of {each(False)} ({ds.window_s:g} s windows, one daemon per run, runs "
                "alternating with the next row's); Nexus's group commit, 4 writers",
            ),
            Row(
                label,
                f"CPU%, {DIR_RATE}/s, {LEFTOVER:,} leftover",
                f"{full:.1f} %",
                f"median of {each(True)}; {full - empty:+.1f} points over the empty directory "
                f"(target <= +10); {LEFTOVER:,} empty segments older than the active one at "
                f"start; delivered {delivered:,}/{written:,}",
            ),
        ]
    st = ds.start
    if st is not None:
        rows.append(
            Row(
                label,
                f"ready with {st.files:,} files",
                f"{st.ready_s:.1f} s",
                f"process start to /readyz 200 (target <= 10 s), start_at end; daemon CPU "
                f"{st.cpu_s:.1f} s and peak RSS {mib(st.hwm_kib)} by then; an append made then "
                f"arrived {st.arrival_s * 1000:,.0f} ms later",
            )
        )
    return rows


def memory_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
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
    return rows


def burst_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
    for mode, results in res.bursts.items():
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
                f"{median_dropped(results):,.0f}",
                detail + "; Nexus drops ~1,000 (queue 1,000)",
            )
        )
    return rows


# The targets of the per-sink cursors (issue 8).
BESIDE_TARGET = 0.9  # a healthy sink's rate beside a dead one, of its rate alone
CATCH_UP_TARGET = 50_000.0  # entries/s, delivery permitting
RSS_TARGET_MB = 100.0  # 8 sinks, 2 dead, 1,000,000-entry backlog


def _target(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _pcts(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{_ms(percentile(values, 50))} / {_ms(percentile(values, 99))}"


def _catch_up_row(c: CatchUpResult) -> Row:
    mb = c.backlog_bytes / 1e6
    if c.read_s is not None:
        took = f"through the backlog {c.read_s:.1f} s after the SIGHUP"
    else:
        took = (
            f"NOT through at the {c.bound_s:.0f} s bound: {c.last_read:,} read in {c.last_s:.1f} s"
        )
    if c.variant == "reading only":
        what = "filter accepts nothing: the reading rate alone"
        delivered = f"received {c.received:,}"
    else:
        what = "delivering to its own 0 ms receiver"
        delivered = (
            f"whole backlog delivered after {c.delivered_s:.1f} s = {c.delivered_rate:,.0f}/s"
            if c.delivered_s is not None
            else f"NOT all delivered: {c.last_received:,} in {c.last_s:.1f} s = "
            f"{c.delivered_rate:,.0f}/s"
        )
    ok = c.read_s is not None and c.read_rate >= CATCH_UP_TARGET
    beside = f"while {c.tails} sinks tail {RATE:,.0f} appends/s" if c.tails else "alone"
    return Row(
        "e2e cursors, catch-up",
        f"{c.variant}{'' if c.tails else ', alone'}: entries/s read",
        f"{c.read_rate:,.0f}",
        f"{what}; {c.backlog:,} entries ({mb:,.0f} MB), added by SIGHUP with start_at "
        f"beginning {beside}; {took}; {delivered}; daemon "
        f"CPU {c.cpu_pct:.0f} % of a core meanwhile; "
        f"target >= {CATCH_UP_TARGET:,.0f}/s: {_target(ok)}; right then (the live stream "
        f"written meanwhile still to read) state {c.lagging.get('state')}, lag "
        f"{c.lagging.get('lag', {}).get('bytes', 0) / 1e6:,.1f} MB",
    )


def _tail_latency_row(c: CatchUpResult) -> Row:
    missing = f" ({c.missing:,} MISSING)" if c.missing else ""
    return Row(
        "e2e cursors, catch-up",
        f"{c.variant}: tailing p50/p99 ms",
        f"{_pcts(c.before_ms)} -> {_pcts(c.during_ms)}",
        f"fsync->arrival at the 2 tailing sinks' receivers, pooled: before the reload "
        f"({c.written_before:,} written at {c.rate_before:,.0f}/s, max "
        f"{_ms(max(c.before_ms, default=0))} ms) -> during the catch-up ({c.written_during:,} "
        f"at {c.rate_during:,.0f}/s, max {_ms(max(c.during_ms, default=0))} ms); "
        f"{len(c.before_ms) + len(c.during_ms):,} arrivals{missing}",
    )


def cursor_rows(res: Results) -> list[Row]:
    cur = res.cursors
    rows: list[Row] = []
    b = cur.beside
    if b is not None and b.alone and b.beside:
        each = "; ".join(
            f"{label} " + " / ".join(f"{r.rate:,.0f}" for r in runs)
            for label, runs in (("alone", b.alone), ("beside", b.beside))
        )
        dead = b.dead
        rows.append(
            Row(
                f"e2e cursors ({b.loop})",
                "healthy events/s: alone / beside dead",
                f"{b.alone_rate:,.0f} / {b.beside_rate:,.0f}",
                f"median of {len(b.alone)} x {b.events:,} ev each ({each}), runs alternating; "
                "pre-written WAL handed over at once, 0 ms receiver, default concurrency, block",
            )
        )
        rows.append(
            Row(
                "e2e cursors",
                "healthy beside dead / alone",
                f"{b.ratio:.2f}x",
                f"target >= {BESIDE_TARGET}x: {_target(b.ratio >= BESIDE_TARGET)}; the dead sink "
                f"(connection refused): state {dead.get('state')}, held {dead.get('queue_depth')}, "
                f"delivered {dead.get('delivered')}, lag {dead.get('lag', {}).get('bytes', '?'):,} "
                "bytes",
            )
        )
    for c in cur.catch_ups:
        rows.append(_catch_up_row(c))
        if c.tails:
            rows.append(_tail_latency_row(c))
    m = cur.memory
    if m is not None:
        mb = m.hwm_kib * 1024 / 1e6
        how = (
            f"until the {MEM_HEALTHY} healthy sinks had delivered it all ({m.seconds:.0f} s)"
            if m.finished
            else f"stopped at the {m.bound_s:.0f} s bound"
        )
        rows.append(
            Row(
                f"e2e cursors, {MEM_HEALTHY + MEM_DEAD} sinks ({MEM_DEAD} dead)",
                "peak RSS",
                mib(m.hwm_kib),
                f"VmHWM = {mb:,.1f} MB, target <= {RSS_TARGET_MB:.0f} MB: "
                f"{_target(mb <= RSS_TARGET_MB)}; {m.entries:,}-entry backlog, block mode, "
                f"max_inflight 1,000; {how}; VmRSS sampled max {mib(m.rss_sampled_max_kib)}, at "
                f"end {mib(m.rss_end_kib)}; read {m.lines_read:,} lines; healthy delivered "
                f"{min(m.delivered, default=0):,}-{max(m.delivered, default=0):,} each, held "
                + "/".join(f"{h:,}" for h in m.healthy_held)
                + "; dead held "
                + "/".join(f"{h:,}" for h in m.dead_held)
                + f" ({', '.join(sorted(set(m.dead_states)))})",
            )
        )
    for cpu in cur.cpu:
        kind = "reading only" if cpu.reading_only else "delivering"
        rows.append(
            Row(
                "e2e cursors, reading CPU",
                f"CPU%, {cpu.sinks} sink{'s' if cpu.sinks > 1 else ''}, {kind}",
                f"{cpu.median_pct:.1f} %",
                f"% of one core at {cpu.write_rate:,.0f} appends/s, median of {len(cpu.pct)} x "
                f"{cpu.window_s:g} s ("
                + " / ".join(f"{v:.1f}" for v in cpu.pct)
                + ")"
                + ("; filter accepts nothing" if cpu.reading_only else "")
                + f"; {cpu.written:,} written, each sink delivered {cpu.delivered:,}; block mode",
            )
        )
    for reading_only in (True, False):
        pair = {c.sinks: c for c in cur.cpu if c.reading_only == reading_only}
        one, four = pair.get(1), pair.get(4)
        if one is not None and four is not None and one.median_pct > 0:
            kind = "reading only" if reading_only else "delivering"
            rows.append(
                Row(
                    "e2e cursors, reading CPU",
                    f"4 sinks / 1 sink, {kind}",
                    f"{four.median_pct / one.median_pct:.2f}x",
                    f"{four.median_pct:.1f} % / {one.median_pct:.1f} %",
                )
            )
    return rows


def _transport_rows(c: TrCell) -> list[Row]:
    bench = f"e2e transports ({c.loop})"
    if not c.runs:
        return [Row(bench, f"{c.label} events/s", "n/a", c.error or "not measured")]
    target = c.kind.target
    aim = f"target >= {target:,.0f}/s: {_target(c.rate >= target)}; " if target is not None else ""
    lost = c.lost if not c.kind.reliable else 0
    others = f"; other processes {c.others:.0%} of a core" if c.others is not None else ""
    rates = " / ".join(f"{r.rate:,.0f}" for r in c.runs)
    changed = c.kind.changed or "defaults"
    return [
        Row(
            bench,
            f"{c.label} events/s",
            f"{c.rate:,.0f}",
            f"median of {len(c.runs)} ({rates}) x {c.events:,} ev; {aim}{changed}"
            f"; server {c.program}: busy {c.server_share:.0%} of a core, {c.server_us:,.1f} us/ev",
        ),
        Row(
            bench,
            f"{c.label} CPU us/ev",
            f"{c.cpu_us:,.1f}",
            f"daemon utime+stime, busy {c.daemon_share:.0%} of a core; incl. "
            f"~{c.poll_us:.2f} us/ev of /status polls "
            f"({c.status_us:,.0f} us each); delivered {c.delivered:,} = written {c.written:,}, "
            f"received {c.received:,}"
            + (f" ({lost:,} LOST over UDP)" if lost else "")
            + f"; peak RSS {mib(c.hwm_kib)}{others}",
        ),
    ]


def transport_rows(res: Results) -> list[Row]:
    rows = [row for c in res.transports for row in _transport_rows(c)]
    if res.transports:
        rows.append(
            Row(
                "e2e transports",
                "method",
                "pre-written",
                "as throughput: WAL pre-written, renamed in at once; one daemon and one server "
                "process per type, runs round-robin; timed to delivered = N in /status (polled "
                f"every {POLL_SLOW_S * 1000:g} ms, {POLL_FAST_S * 1000:g} ms near the end), then "
                "N checked at the server; overflow block, max_inflight 1,000, other settings "
                "default unless said",
            )
        )
    return rows


def error_rows(res: Results) -> list[Row]:
    return [
        Row("e2e ERROR", err.split(":", 1)[0], "failed", err.split(":", 1)[1][:300])
        for err in res.errors
    ]


def rows_for(res: Results) -> list[Row]:
    """Every figure in ``res`` (the ones not measured give no rows), then the errors."""
    return [
        *throughput_rows(res),
        *latency_rows(res),
        *idle_rows(res),
        *dirsize_rows(res),
        *memory_rows(res),
        *burst_rows(res),
        *cursor_rows(res),
        *transport_rows(res),
        *status_rows(res),
        *target_rows(res),
        *adaptive_rows(res),
        *error_rows(res),
    ]
