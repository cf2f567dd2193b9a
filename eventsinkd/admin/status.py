"""The ``/status`` document: what an operator reads to see where each sink stands.

It is built from a read-only view of the running daemon (:class:`StatusView`, which the
daemon satisfies), so that the admin server needs nothing of the daemon but what it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eventsinkd import __version__
from eventsinkd.metrics import DaemonView
from eventsinkd.wal.position import Position

if TYPE_CHECKING:
    from eventsinkd.config.model import Config
    from eventsinkd.delivery.cursor import SinkCursor
    from eventsinkd.wal.reading import SharedReading


class StatusView(DaemonView, Protocol):
    """What ``/status`` reads of the daemon, besides what the metrics read."""

    cfg: Config
    config_path: Path | None
    loaded_at: float  # Unix time the running config was loaded

    @property
    def cursors(self) -> Mapping[str, SinkCursor]: ...

    @property
    def reading(self) -> SharedReading: ...


def _str(pos: Position | None) -> str | None:
    return str(pos) if pos is not None else None


def status_document(d: StatusView) -> dict[str, Any]:
    """What ``/status`` answers: per sink, its cursor, state, lag and counts; the reader."""
    letters = d.dead_letters_by_sink()
    lags = d.sink_lags()
    sinks: dict[str, dict[str, Any]] = {}
    for name, cursor in d.cursors.items():
        sink, st, lag = cursor.sink, cursor.sink.stats, lags[name]
        cp = cursor.checkpoints
        saved = cp.store.last_saved if cp.store is not None else None
        sinks[name] = {
            "type": sink.cfg.type,
            "url": sink.cfg.target,
            "state": cursor.state(),
            "paused_since": sink.paused_since,
            "last_error": st.last_error,
            "cursor": {
                "read": _str(cursor.read_position),
                "acknowledged": _str(cp.acked),
                "saved": _str(saved),
            },
            "lag": {"events": lag.events, "bytes": lag.bytes, "seconds": lag.seconds},
            "queue_depth": sink.inflight,
            "max_inflight": sink.max_inflight,
            "concurrency": {
                "current": sink.requests.limit,
                "setting": sink.cfg.concurrency,
                "max": sink.cfg.max_requests,
            },
            "order": "wal" if sink.ordered else sink.cfg.order,
            "rate_limit": sink.rate_limit_status(),
            "offered": st.offered,
            "delivered": st.delivered,
            "failed": st.failed,
            "dropped": st.dropped,
            "filtered": st.filtered,
            "dead_letters": letters.get(name, (0, 0))[0],
            "last_success": st.last_success,
            "last_failure": st.last_failure,
        }
        if cursor.statuses is not None:
            sinks[name]["status_events"] = {
                "pending": cursor.statuses.pending,
                "forgotten": dict(cursor.statuses.forgotten),
            }
    rs = d.reading.stats
    return {
        "version": __version__,
        "ready": d.ready,
        "problems": d.problems(),
        "wal_dir": str(d.cfg.wal.dir),
        # The most-behind sink: 0 bytes means every cursor has read everything.
        "lag": {
            "bytes_behind": max((lag.bytes for lag in lags.values()), default=0),
            "seconds_behind": max((lag.seconds for lag in lags.values()), default=0.0),
        },
        "reader": {
            "lines": rs.lines,
            "rejected": dict(rs.rejected),
            "segments": rs.segments,
            "rewrites": rs.rewrites,
            "truncations": rs.truncations,
            "vanished": rs.vanished,
        },
        "overflow": d.cfg.events.overflow,
        "event_types": list(d.cfg.events.types),
        "sinks": sinks,
        "config": {
            "file": str(d.config_path) if d.config_path else None,
            "loaded_at": d.loaded_at,
        },
    }
