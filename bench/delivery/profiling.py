"""``python -m bench.delivery --profile``: where the engine spends its time, under cProfile."""

from __future__ import annotations

import cProfile
import io
import pstats

from bench.common import Receiver
from bench.delivery.engine import Sample, calibrate, deliver, make_batches, run_on

PACKAGES = (
    ("/eventsinkd/", "eventsinkd"),
    ("/prometheus_client/", "prometheus_client"),
    ("/aiohttp/", "aiohttp"),
    ("/multidict/", "multidict/yarl"),
    ("/yarl/", "multidict/yarl"),
    ("/asyncio/", "asyncio"),
    ("/bench/", "bench harness"),
)


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
