"""eventsinkd: a webhook sidecar for BubbleFish Nexus (command line)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from eventsinkd import __version__
from eventsinkd.logs import setup_logging
from eventsinkd.secrets import SecretError, resolve_secret
from eventsinkd.wal.lines import LineParser


def _parser_for(mac_key: str | None) -> LineParser:
    key = resolve_secret(mac_key).encode() if mac_key else None
    return LineParser(key)


def _add_wal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("wal_dir", type=Path, metavar="WAL_DIR", help="the Nexus WAL directory")
    p.add_argument(
        "--mac-key",
        metavar="REF",
        help="HMAC key as Nexus's mac_key_file: env:VAR, file:/path or a literal",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="eventsinkd", description=__doc__)
    ap.add_argument("--version", action="version", version=f"eventsinkd {__version__}")
    ap.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tail", help="print memory_written event bodies, one per line")
    _add_wal_args(t)
    t.add_argument("--from", dest="start_at", choices=["beginning", "end"], default="end")
    t.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep waiting for new entries (default) or stop at the end",
    )
    t.add_argument("--full", action="store_true", help="include the memory content")
    t.add_argument(
        "--state-dir",
        type=Path,
        help="save the position here and resume from it (never inside WAL_DIR)",
    )
    t.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS")
    t.add_argument(
        "--force-polling", action="store_true", help="do not use inotify (network filesystems)"
    )

    v = sub.add_parser("verify", help="check every line of every segment; exit 1 on damage")
    _add_wal_args(v)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        parser = _parser_for(args.mac_key)
    except SecretError as exc:
        print(f"eventsinkd: --mac-key: {exc}", file=sys.stderr)
        return 2
    if args.command == "verify":
        from eventsinkd.verify import verify

        try:
            return verify(args.wal_dir, parser, sys.stdout)
        except OSError as exc:
            print(f"eventsinkd: cannot read {args.wal_dir}: {exc}", file=sys.stderr)
            return 2
    if args.command == "tail":
        from eventsinkd.tail import tail

        try:
            return asyncio.run(
                tail(
                    args.wal_dir,
                    parser,
                    start_at=args.start_at,
                    follow=args.follow,
                    content="full" if args.full else "summary",
                    state_dir=args.state_dir,
                    poll_interval_s=args.poll_interval,
                    force_polling=args.force_polling,
                    out=sys.stdout.buffer,
                )
            )
        except ValueError as exc:  # e.g. a state directory inside the WAL directory
            print(f"eventsinkd: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0
    raise AssertionError(args.command)
