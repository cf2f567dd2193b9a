"""``eventsinkd health`` and ``eventsinkd status``: asking a running daemon
(:mod:`eventsinkd.cli.ask`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from eventsinkd.cli.ask import AskError, admin_base, get, status, summary
from eventsinkd.cli.common import HelpFormatter, add_config_arg, fail


def _add_ask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="for each request")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep asking this long while nothing answers (a daemon just started)",
    )


def add_commands(sub: Any) -> None:
    h = sub.add_parser(
        "health",
        help="ask a running daemon; exit 0 if healthy, 1 if not",
        description="Ask a running daemon whether it is healthy (/healthz) or ready "
        "(/readyz), at the config's admin.listen. Exit 0 or 1 only, as a container health "
        "check expects.",
        formatter_class=HelpFormatter,
    )
    add_config_arg(h)
    h.add_argument(
        "--ready",
        action="store_true",
        help="also require a readable WAL and writable state (/readyz)",
    )
    h.add_argument("--url", help="health URL to ask instead of the config's admin.listen")
    _add_ask_args(h)
    h.set_defaults(func=cmd_health)

    st = sub.add_parser(
        "status",
        help="where a running daemon and each of its sinks stand",
        description="Ask a running daemon (at the config's admin.listen) for /status and "
        "print it for a person: delivered, failed, dropped, lag and queue of each sink.",
        formatter_class=HelpFormatter,
    )
    add_config_arg(st)
    st.add_argument("--url", help="admin base URL instead of the config's admin.listen")
    st.add_argument("--json", action="store_true", help="the /status document as it is")
    _add_ask_args(st)
    st.set_defaults(func=cmd_status)


def _patiently(wait_s: float, ask: Any) -> Any:
    """``ask()``, again every half second for up to ``wait_s`` while it raises AskError."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return ask()
        except AskError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def cmd_health(args: argparse.Namespace) -> int:
    # Always 0 or 1: container runtimes reserve other exit codes of a health check.
    try:
        url = args.url or admin_base(args.config) + ("/readyz" if args.ready else "/healthz")
        code, body = _patiently(args.wait, lambda: get(url, args.timeout))
    except AskError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    ok = 200 <= code < 300
    print(("healthy: " if ok else "unhealthy: ") + body.strip()[:4096])
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    try:
        base = args.url.rstrip("/") if args.url else admin_base(args.config)
        doc = _patiently(args.wait, lambda: status(base, args.timeout))
    except AskError as exc:
        return fail(str(exc), 1)
    print(json.dumps(doc, indent=2) if args.json else summary(doc))
    return 0
