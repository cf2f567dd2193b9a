"""Asking a running daemon: ``eventsinkd health`` and ``eventsinkd status``.

Both find the daemon where its config says (``admin.listen``) unless given a URL. Only
the ``admin`` section of the file is read and checked: a probe must not fail because a
secret the daemon resolved at start (``env:VAR``) is not in the probe's environment. A
wildcard listen address (``0.0.0.0``, ``::``) is asked on the loopback of its family.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from eventsinkd.cli.common import SectionError, missing_default, read_section
from eventsinkd.config.model import AdminConfig

WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


class AskError(Exception):
    """The daemon could not be asked (no config, no answer); the message says why."""


def admin_base(config: Path) -> str:
    """``http://host:port`` of the daemon that ``config`` describes."""
    hint = missing_default(config)
    if hint is not None:
        raise AskError(f"{config}: {hint}, or --url")
    try:
        admin = read_section(config, "admin", AdminConfig)
    except SectionError as exc:
        raise AskError(str(exc)) from None
    host = WILDCARDS.get(admin.host, admin.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{admin.port}"


def get(url: str, timeout_s: float) -> tuple[int, str]:
    """Status code and body of a GET; AskError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096).decode(errors="replace")
    except ValueError:  # urllib: "unknown url type"
        raise AskError(f"{url} is not a URL: give http://host:port") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            raise AskError(
                f"{url}: nothing answers there (connection refused). Is the daemon running? "
                "Is admin.listen right (the config given with -c, or --url)?"
            ) from None
        if isinstance(reason, TimeoutError):
            raise AskError(
                f"{url}: no answer within {timeout_s:g}s. Is something else listening at "
                "admin.listen? A longer --timeout gives a busy daemon more time."
            ) from None
        raise AskError(f"{url}: {reason}") from None


# -- eventsinkd status -------------------------------------------------------------------


def _ago(unix: float | None, now: float) -> str:
    if not unix:
        return "never"
    s = max(0.0, now - unix)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _lag(lag: dict[str, Any]) -> str:
    events, seconds = int(lag.get("events", 0)), float(lag.get("seconds", 0.0))
    if not events and not lag.get("bytes"):
        return "none"
    return f"{events:,} events, {seconds:.1f}s"


def summary(doc: dict[str, Any], now: float | None = None) -> str:
    """``/status`` as a person reads it: the daemon, then one block per sink."""
    now = time.time() if now is None else now
    ready = "ready" if doc.get("ready") else "NOT READY"
    lag = doc.get("lag", {})
    lines = [
        f"eventsinkd {doc.get('version', '?')}: {ready}, WAL {doc.get('wal_dir', '?')}, "
        f"{doc.get('overflow', '?')} mode, "
        f"{float(lag.get('seconds_behind', 0.0)):.1f}s behind at most",
    ]
    lines += [f"  problem: {p}" for p in doc.get("problems", [])]
    for name, s in sorted(doc.get("sinks", {}).items()):
        conc = s.get("concurrency", {})
        setting = conc.get("setting")
        limit = f"{conc.get('current')} in flight"
        if setting == "auto":
            limit += f" (auto, max {conc.get('max')})"
        lines += [
            "",
            f"{name} ({s.get('type')} {s.get('url')}): {s.get('state')}",
            f"  delivered {s.get('delivered', 0):,}  failed {s.get('failed', 0):,}  "
            f"dropped {s.get('dropped', 0):,}  dead letters {s.get('dead_letters', 0):,}"
            + (f"  filtered {s['filtered']:,}" if s.get("filtered") else ""),
            f"  lag {_lag(s.get('lag', {}))}  queue {s.get('queue_depth', 0):,}/"
            f"{s.get('max_inflight', 0):,}  concurrency {limit}",
            f"  last success {_ago(s.get('last_success'), now)}, "
            f"last failure {_ago(s.get('last_failure'), now)}",
        ]
        if s.get("last_error") and s.get("state") != "running":
            lines.append(f"  last error: {s['last_error']}")
    return "\n".join(lines)


def status(base: str, timeout_s: float) -> dict[str, Any]:
    code, body = get(f"{base}/status", timeout_s)
    if code != 200:
        raise AskError(f"{base}/status answered HTTP {code}: {body.strip()[:200]}")
    try:
        doc: dict[str, Any] = json.loads(body)
    except ValueError:
        raise AskError(f"{base}/status: not a JSON document") from None
    return doc
