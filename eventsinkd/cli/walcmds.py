"""``eventsinkd tail`` and ``eventsinkd verify``: reading a WAL directory without the daemon.

Both take the directory and Nexus's ``mac_key`` either on the command line or from a config
file (``-c``). Only the config's ``wal`` section is read and checked: a sink's secret in an
environment variable that this shell does not have must not stop a look at the WAL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from eventsinkd.cli.common import (
    EXIT_CONFIG,
    HelpFormatter,
    SectionError,
    complete_path,
    fail,
    read_section,
)
from eventsinkd.common.logs import setup_logging
from eventsinkd.common.secrets import SecretError, resolve_secret
from eventsinkd.config.model import WalConfig
from eventsinkd.events import EVENT_TYPES, MEMORY_WRITTEN
from eventsinkd.wal.lines import LineParser

if TYPE_CHECKING:
    from eventsinkd.cli.tail import Render


class UsageError(Exception):
    """A WAL directory or key that cannot be used; the message says what to do."""


def _add_wal_args(p: argparse.ArgumentParser) -> None:
    wal_dir = p.add_argument(
        "wal_dir",
        type=Path,
        nargs="?",
        metavar="WAL_DIR",
        help="the Nexus WAL directory (default: the config's wal.dir, with -c)",
    )
    config = p.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="PATH",
        help="take WAL_DIR and the HMAC key from this config's wal section",
    )
    complete_path(wal_dir, directory=True)
    complete_path(config)
    p.add_argument(
        "--mac-key",
        metavar="REF",
        help="HMAC key as Nexus's mac_key_file: env:VAR, file:/path or a literal "
        "(default: the config's wal.mac_key, with -c; else HMACs are not checked)",
    )


def _event_types(value: str) -> list[str]:
    types = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown or not types:
        raise argparse.ArgumentTypeError(
            f"unknown event type {', '.join(unknown) or repr(value)}; use {', '.join(EVENT_TYPES)}"
        )
    return types


def add_commands(sub: Any) -> None:
    t = sub.add_parser(
        "tail",
        help="print the events the daemon would send, one JSON body per line",
        description="Print the events the daemon would send for a WAL, one JSON body per "
        "line, without sending them. By default it starts at the end and waits for new "
        "writes; --from beginning --no-follow prints what the WAL holds and stops.",
        formatter_class=HelpFormatter,
    )
    _add_wal_args(t)
    t.add_argument(
        "--sink",
        metavar="NAME",
        help="print what this sink of the config (-c) would send: its filter, format, "
        "templates and transform applied (without: the plain bodies)",
    )
    t.add_argument(
        "--types",
        type=_event_types,
        default=None,
        metavar="TYPE[,TYPE...]",
        help=f"event types to print, among {', '.join(EVENT_TYPES)} (default: "
        f"{MEMORY_WRITTEN}; with --sink, the config's events.types)",
    )
    t.add_argument(
        "--from",
        dest="start_at",
        choices=["beginning", "end"],
        default="end",
        help="where to start (without a position saved in --state-dir)",
    )
    t.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep waiting for new entries, or stop at the end (--no-follow)",
    )
    t.add_argument("--full", action="store_true", help="include the memory content")
    state_dir = t.add_argument(
        "--state-dir",
        type=Path,
        help="save the position here and resume from it (never inside WAL_DIR); "
        "without: nothing is saved",
    )
    complete_path(state_dir, directory=True)
    t.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how often the directory is checked without a change notification",
    )
    t.add_argument(
        "--force-polling", action="store_true", help="do not use inotify (network filesystems)"
    )
    t.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="of the messages on stderr",
    )
    t.set_defaults(func=cmd_tail)

    v = sub.add_parser(
        "verify",
        help="check every line of every segment; exit 1 on damage",
        description="Read every segment of a WAL at rest and report, per segment, the "
        "entries it holds and the lines it rejects (CRC, HMAC with a key, JSON). Exit 1 "
        "if any line was rejected.",
        formatter_class=HelpFormatter,
    )
    _add_wal_args(v)
    v.set_defaults(func=cmd_verify)


def wal_source(args: argparse.Namespace) -> tuple[Path, LineParser]:
    """The WAL directory and the line parser (with the HMAC key, if any) that ``args`` give."""
    wal: WalConfig | None = None
    if args.config is not None:
        wal = _wal_section(args.config)
    wal_dir = args.wal_dir if args.wal_dir is not None else (wal.dir if wal else None)
    if wal_dir is None:
        raise UsageError("give the WAL directory, or -c PATH to take it from a config")
    ref = args.mac_key if args.mac_key is not None else (wal.mac_key if wal else None)
    try:
        key = resolve_secret(ref).encode() if ref else None
    except SecretError as exc:
        where = "--mac-key" if args.mac_key is not None else f"{args.config}: wal.mac_key"
        raise UsageError(f"{where}: {exc}") from None
    return wal_dir, LineParser(key)


def _wal_section(path: Path) -> WalConfig:
    try:
        return read_section(path, "wal", WalConfig)
    except SectionError as exc:
        raise UsageError(f"{exc} (eventsinkd check-config -c {path} says more)") from None


class _Counting:
    """Standard output that notes whether anything was written to it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _why_nothing(args: argparse.Namespace, wal_dir: Path) -> str:
    if args.start_at == "end" and args.state_dir is None:
        return (
            "nothing printed: --from end (the default) starts after the last entry. "
            "--from beginning prints what the WAL holds"
        )
    if not wal_dir.is_dir():
        return f"nothing printed: {wal_dir} does not exist"
    return (
        f"nothing printed: no {', '.join(args.types)} event in {wal_dir} from there "
        "(eventsinkd verify shows what the WAL holds)"
    )


def cmd_tail(args: argparse.Namespace) -> int:
    from eventsinkd.cli.tail import tail

    setup_logging(args.log_level)
    render: Render | None = None
    types = args.types or [MEMORY_WRITTEN]
    if args.sink is not None:
        try:
            render, config_types = _sink_preview(args)
        except UsageError as exc:
            return fail(str(exc), EXIT_CONFIG)
        types = args.types or config_types
    args.types = types
    try:
        wal_dir, parser = wal_source(args)
    except UsageError as exc:
        return fail(str(exc))
    out = _Counting(sys.stdout.buffer)
    try:
        code = asyncio.run(
            tail(
                wal_dir,
                parser,
                start_at=args.start_at,
                follow=args.follow,
                content="full" if args.full else "summary",
                types=frozenset(types),
                render=render,
                state_dir=args.state_dir,
                poll_interval_s=args.poll_interval,
                force_polling=args.force_polling,
                out=cast(BinaryIO, out),
            )
        )
    except ValueError as exc:  # e.g. a state directory inside the WAL directory
        return fail(str(exc))
    if code == 0 and not args.follow and not out.written:
        print(f"eventsinkd: {_why_nothing(args, wal_dir)}", file=sys.stderr)
    return code


def _sink_preview(args: argparse.Namespace) -> tuple[Render, list[str]]:
    """``--sink NAME``: how that sink of the config renders each event, and the event types
    the config produces. The whole config is read (the sink's options come from it)."""
    from eventsinkd.cli.preview import SinkPreview
    from eventsinkd.config.loading import ConfigError, load_config

    if args.config is None:
        raise UsageError("--sink NAME needs the config it is in: add -c PATH")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    sinks = {s.name: s for s in cfg.events.sinks}
    if args.sink not in sinks:
        known = ", ".join(sinks) or "none"
        raise UsageError(f"{args.config} has no sink {args.sink!r} (its sinks: {known})")
    return SinkPreview(sinks[args.sink]).line, list(cfg.events.types)


def cmd_verify(args: argparse.Namespace) -> int:
    from eventsinkd.cli.verify import verify

    setup_logging("error")
    try:
        wal_dir, parser = wal_source(args)
    except UsageError as exc:
        return fail(str(exc))
    try:
        return verify(wal_dir, parser, sys.stdout)
    except BrokenPipeError:
        raise
    except OSError as exc:
        return fail(f"cannot read {wal_dir}: {exc}")
