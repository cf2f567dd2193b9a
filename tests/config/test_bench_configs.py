"""What the benchmarks hand the daemon, it accepts.

A figure of ``make bench`` is only as good as the run that makes it, and no test runs
``make bench``. The cursors figure's filter became one the daemon refuses when status
events made ``event_types`` a checked list: its reload was refused and the figure could
not be made, unnoticed until the next full run. These checks are cheap; they run the
daemon's own config model and filter over lines of the benchmarks' own writer.
"""

from __future__ import annotations

from pathlib import Path

from bench.e2e.common import write_fast
from bench.e2e.cursors import NOTHING
from eventsinkd.config.options import FilterConfig
from eventsinkd.delivery.filters import EventFilter
from eventsinkd.events import MEMORY_WRITTEN
from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import LineParser


def test_the_filter_that_accepts_nothing_is_valid_and_accepts_no_entry_of_the_writer(
    tmp_path: Path,
) -> None:
    write_fast(tmp_path, 300)
    parser = LineParser()
    entries = [
        parser.parse(line)
        for segment in sorted(tmp_path.iterdir())
        for line in segment.read_bytes().splitlines()
    ]
    assert len(entries) == 300 and all(isinstance(e, Entry) for e in entries)
    nothing = EventFilter(FilterConfig.model_validate(NOTHING))
    everything = EventFilter(FilterConfig())
    assert not any(nothing.matches(MEMORY_WRITTEN, e) for e in entries if isinstance(e, Entry))
    assert all(everything.matches(MEMORY_WRITTEN, e) for e in entries if isinstance(e, Entry))
