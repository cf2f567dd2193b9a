"""eventsinkd: a webhook sidecar for BubbleFish Nexus (command line).

This is the only module that knows about argv; each command calls into the core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

from eventsinkd import __version__
from eventsinkd.cli.ask import AskError, admin_base, get, status, summary
from eventsinkd.common.logs import setup_logging
from eventsinkd.common.secrets import SecretError, resolve_secret
from eventsinkd.config.auth import describe_auth
from eventsinkd.config.loading import DEFAULT_PATH, ConfigError, load_config
from eventsinkd.events import EVENT_TYPES, MEMORY_WRITTEN
from eventsinkd.wal.lines import LineParser

EXIT_CONFIG = 2


def _add_wal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("wal_dir", type=Path, metavar="WAL_DIR", help="the Nexus WAL directory")
    p.add_argument(
        "--mac-key",
        metavar="REF",
        help="HMAC key as Nexus's mac_key_file: env:VAR, file:/path or a literal",
    )


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_PATH,
        metavar="PATH",
        help=f"YAML config file (default {DEFAULT_PATH})",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="eventsinkd", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"eventsinkd {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the daemon: tail the WAL and deliver events to the sinks")
    _add_config_arg(r)

    c = sub.add_parser("check-config", help="validate a config file; exit 0 or 2")
    _add_config_arg(c)

    t = sub.add_parser(
        "tail", help="print the events the daemon would send, one JSON body per line"
    )
    t.add_argument(
        "wal_dir",
        type=Path,
        nargs="?",
        metavar="WAL_DIR",
        help="the Nexus WAL directory (with --sink: default the config's wal.dir)",
    )
    t.add_argument(
        "--mac-key",
        metavar="REF",
        help="HMAC key as Nexus's mac_key_file: env:VAR, file:/path or a literal",
    )
    t.add_argument(
        "--sink",
        metavar="NAME",
        help="print what this sink of the config (-c) would send: its filter, format, "
        "templates and transform applied",
    )
    _add_config_arg(t)
    t.add_argument(
        "--types",
        type=_event_types,
        default=None,
        metavar="TYPE[,TYPE...]",
        help=f"event types to print, among {', '.join(EVENT_TYPES)} (default {MEMORY_WRITTEN}; "
        "with --sink the config's events.types)",
    )
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
    t.add_argument("--log-level", default="warning")

    v = sub.add_parser("verify", help="check every line of every segment; exit 1 on damage")
    _add_wal_args(v)

    h = sub.add_parser("health", help="ask a running daemon; exit 0 if healthy, 1 if not")
    _add_config_arg(h)
    h.add_argument(
        "--ready",
        action="store_true",
        help="also require a readable WAL and writable state (/readyz)",
    )
    h.add_argument("--url", help="health URL to ask instead of the config's admin.listen")
    h.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")

    st = sub.add_parser("status", help="where a running daemon and each of its sinks stand")
    _add_config_arg(st)
    st.add_argument("--url", help="admin base URL instead of the config's admin.listen")
    st.add_argument("--json", action="store_true", help="the /status document as it is")
    st.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")

    rc = sub.add_parser("receive", help="a webhook receiver that verifies and prints events")
    rc.add_argument("--host", default="127.0.0.1")
    rc.add_argument("--port", type=int, default=8080)
    rc.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="WHSEC",
        help="whsec_... (literal, env:VAR or file:/path); repeat for rotation",
    )

    dl = sub.add_parser("dead-letters", help="list, replay or purge events given up on")
    dl_sub = dl.add_subparsers(dest="action", required=True, metavar="ACTION")
    dl_list = dl_sub.add_parser("list", help="print the dead letters")
    dl_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dl_replay = dl_sub.add_parser(
        "replay", help="send them again (through the running daemon if there is one)"
    )
    dl_replay.add_argument(
        "--id", dest="ids", action="append", metavar="WEBHOOK_ID", help="only these (repeat)"
    )
    dl_purge = dl_sub.add_parser("purge", help="delete them")
    dl_purge.add_argument("--before", metavar="TIME", help="only those last tried before TIME")
    for p in (dl_list, dl_replay, dl_purge):
        _add_config_arg(p)
        p.add_argument("--sink", metavar="NAME", help="only this sink's letters")

    rw = sub.add_parser("rewind", help="move a sink's cursor back and deliver again from there")
    rw.description = (
        "Move a sink's cursor (daemon running or not): it delivers from there on, again, same "
        "webhook-ids. A move FORWARD past events the sink has not delivered is refused with how "
        "many it would skip (the memory entries between the two positions that its filter "
        "takes), unless --forward. It also chooses the position of a sink whose cursor file "
        "cannot be used (in block mode the daemon does not start until then)."
    )
    _add_config_arg(rw)
    rw.add_argument("--sink", required=True, metavar="NAME")
    rw.add_argument(
        "--to", required=True, metavar="WHERE", help="beginning, an RFC 3339 time, or a payload_id"
    )
    rw.add_argument(
        "--forward", action="store_true", help="allow skipping events not delivered yet"
    )

    d = sub.add_parser("demo", help="writer, daemon and receiver on this machine, live")
    d.add_argument("--events", type=int, default=5000, help="memory writes to produce")
    d.add_argument("--rate", type=float, default=1000.0, help="writes per second")
    d.add_argument("--keep", action="store_true", help="keep the demo directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "tail": cmd_tail,
        "verify": cmd_verify,
        "health": cmd_health,
        "status": cmd_status,
        "receive": cmd_receive,
        "demo": cmd_demo,
        "dead-letters": cmd_dead_letters,
        "rewind": cmd_rewind,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _fail(msg: str, code: int = EXIT_CONFIG) -> int:
    print(f"eventsinkd: {msg}", file=sys.stderr)
    return code


def _wal_parser(args: argparse.Namespace) -> LineParser:
    return LineParser(resolve_secret(args.mac_key).encode() if args.mac_key else None)


def cmd_run(args: argparse.Namespace) -> int:
    from eventsinkd.daemon.daemon import Daemon
    from eventsinkd.daemon.runtime import run_loop, tune_gc

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"invalid config, not starting:\n{exc}")
    setup_logging(cfg.log.level, cfg.log.format)
    tune_gc()
    return run_loop(Daemon(cfg, args.config).serve())


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    wal = cfg.wal.dir
    if not wal.is_dir():
        wal_state = "does not exist (yet)"
    elif not os.access(wal, os.R_OK | os.X_OK):
        wal_state = f"NOT readable by uid {os.getuid()}"
    else:
        wal_state = "readable"
    print(f"{args.config}: valid")
    print(
        f"  wal.dir: {wal} ({wal_state}), start_at {cfg.wal.start_at}, "
        f"{'polling' if cfg.wal.force_polling else 'inotify + polling'} "
        f"every {cfg.wal.poll_interval_s}s, HMAC {'checked' if cfg.wal.mac_key else 'not checked'}"
    )
    print(
        f"  state_dir: {cfg.state_dir} (cursors, dead letters up to "
        f"{cfg.dead_letters.max_mb:g} MB per sink)"
    )
    print(
        f"  events: overflow {cfg.events.overflow}, max_inflight {cfg.events.max_inflight}, "
        f"pause_after_failures {cfg.events.pause_after_failures}, "
        f"shutdown_timeout_s {cfg.events.shutdown_timeout_s}"
    )
    for s in cfg.events.sinks:
        extra = ""
        if s.type == "webhook":
            extra = f" signed ({len(s.secrets)} secret(s))" if s.secrets else " unsigned"
        elif s.batch_size > 1:
            extra = f" max_batch={s.batch_size} linger_ms={s.linger_s * 1000:g}"
        if s.type in ("webhook", "otlp"):
            extra += describe_auth(s.auth)
        concurrency = f"auto (max {s.max_requests})" if s.adaptive else str(s.max_requests)
        if s.order != "none":
            extra += f" order={s.order}"
        if s.rate_limit is not None:
            extra += f" rate_limit={s.rate_limit:g}/s"
        print(
            f"  sink {s.name}: {s.type} {s.target} content={s.content} "
            f"concurrency={concurrency} max_retries={s.max_retries} "
            f"start_at={s.start_at or cfg.wal.start_at}{extra}"
        )
    if not cfg.events.sinks:
        print("  no sinks: nothing is read or sent")
    print(f"  admin: http://{cfg.admin.listen}/metrics  log: {cfg.log.level} {cfg.log.format}")
    return 0


def _event_types(value: str) -> list[str]:
    types = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown or not types:
        raise argparse.ArgumentTypeError(
            f"unknown event type {', '.join(unknown) or repr(value)}; use {', '.join(EVENT_TYPES)}"
        )
    return types


def cmd_tail(args: argparse.Namespace) -> int:
    from eventsinkd.cli.tail import Render, tail

    setup_logging(args.log_level)
    types = args.types or [MEMORY_WRITTEN]
    render: Render | None = None
    if args.sink is not None:
        from eventsinkd.cli.preview import SinkPreview

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        sinks = {s.name: s for s in cfg.events.sinks}
        if args.sink not in sinks:
            known = ", ".join(sinks) or "none"
            return _fail(f"{args.config} has no sink {args.sink!r} (its sinks: {known})")
        render = SinkPreview(sinks[args.sink]).line
        if args.wal_dir is None:
            args.wal_dir = cfg.wal.dir
        if args.mac_key is None:
            args.mac_key = cfg.wal.mac_key
        types = args.types or cfg.events.types
    elif args.wal_dir is None:
        return _fail("give the WAL directory (or --sink NAME and -c CONFIG)")
    try:
        parser = _wal_parser(args)
    except SecretError as exc:
        return _fail(f"--mac-key: {exc}")
    try:
        return asyncio.run(
            tail(
                args.wal_dir,
                parser,
                start_at=args.start_at,
                follow=args.follow,
                content="full" if args.full else "summary",
                types=frozenset(types),
                render=render,
                state_dir=args.state_dir,
                poll_interval_s=args.poll_interval,
                force_polling=args.force_polling,
                out=sys.stdout.buffer,
            )
        )
    except ValueError as exc:  # e.g. a state directory inside the WAL directory
        return _fail(str(exc))
    except BrokenPipeError:
        return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from eventsinkd.cli.verify import verify

    setup_logging("error")
    try:
        parser = _wal_parser(args)
    except SecretError as exc:
        return _fail(f"--mac-key: {exc}")
    try:
        return verify(args.wal_dir, parser, sys.stdout)
    except OSError as exc:
        return _fail(f"cannot read {args.wal_dir}: {exc}")


def cmd_health(args: argparse.Namespace) -> int:
    # Always 0 or 1: container runtimes reserve other exit codes of a health check.
    try:
        url = args.url or admin_base(args.config) + ("/readyz" if args.ready else "/healthz")
        code, body = get(url, args.timeout)
    except AskError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    ok = 200 <= code < 300
    print(("healthy: " if ok else "unhealthy: ") + body.strip()[:4096])
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    try:
        doc = status(args.url.rstrip("/") if args.url else admin_base(args.config), args.timeout)
    except AskError as exc:
        return _fail(str(exc), 1)
    print(json.dumps(doc, indent=2) if args.json else summary(doc))
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from eventsinkd.config.sinks import decode_whsec
    from eventsinkd.devtools.receiver import Receiver

    try:
        keys = [decode_whsec(resolve_secret(s)) for s in args.secret]
    except (SecretError, ValueError) as exc:
        return _fail(f"--secret: {exc}")

    async def serve() -> None:
        receiver = Receiver(keys)
        await receiver.start(args.host, args.port)
        check = "verifying signatures" if keys else "NOT verifying signatures (no --secret)"
        print(
            f"listening on http://{args.host}:{receiver.port}/ ({check}); Ctrl-C stops", flush=True
        )
        try:
            await asyncio.Event().wait()
        finally:
            await receiver.stop()
            print(
                f"received {receiver.unique} event(s), {receiver.duplicates} repeated, "
                f"{receiver.bad_signatures} bad signature(s)"
            )

    try:
        asyncio.run(serve())
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc}", 3)
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from eventsinkd.cli import manage

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"invalid config:\n{exc}")
    try:
        if args.action == "list":
            return manage.list_letters(cfg, args.sink, args.json, sys.stdout)
        if args.action == "purge":
            before = manage.parse_time(args.before) if args.before else None
            return manage.purge_letters(cfg, args.sink, before, sys.stdout)
        return manage.replay_letters(cfg, args.sink, args.ids, sys.stdout)
    except (manage.UsageError, ValueError) as exc:
        return _fail(str(exc))
    except (sqlite3.Error, OSError) as exc:
        return _fail(f"cannot use the dead-letter store in {cfg.state_dir}: {exc}", 1)


def cmd_rewind(args: argparse.Namespace) -> int:
    from eventsinkd.cli import manage

    setup_logging("warning")
    try:
        return manage.rewind(
            load_config(args.config),
            args.sink,
            args.to,
            sys.stdout,
            sys.stderr,
            forward=args.forward,
        )
    except ConfigError as exc:
        return _fail(f"invalid config:\n{exc}")
    except (manage.UsageError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(str(exc), 1)


def cmd_demo(args: argparse.Namespace) -> int:
    from eventsinkd.devtools.demo import run_demo

    return run_demo(events=args.events, rate=args.rate, keep=args.keep)
