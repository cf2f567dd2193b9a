"""``eventsinkd run`` and ``eventsinkd check-config``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from eventsinkd.cli.common import EXIT_CONFIG, HelpFormatter, add_config_arg, fail, load
from eventsinkd.common.logs import setup_logging
from eventsinkd.config.auth import describe_auth
from eventsinkd.config.loading import ConfigError
from eventsinkd.config.model import Config


def add_commands(sub: Any) -> None:
    r = sub.add_parser(
        "run",
        help="run the daemon: tail the WAL and deliver events to the sinks",
        description="Run the daemon in the foreground: read the WAL named by wal.dir and "
        "deliver its events to every sink. SIGHUP reloads the config, SIGTERM stops "
        "after draining (events.shutdown_timeout_s).",
        formatter_class=HelpFormatter,
    )
    add_config_arg(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser(
        "check-config",
        help="validate a config file; exit 0 (valid) or 2",
        description="Validate a config file and print what it sets up. Exit 0 when it is "
        "valid (warnings, e.g. a wal.dir that does not exist yet, go to stderr), 2 when not.",
        formatter_class=HelpFormatter,
    )
    add_config_arg(c)
    c.set_defaults(func=cmd_check_config)


def cmd_run(args: argparse.Namespace) -> int:
    from eventsinkd.daemon.daemon import Daemon
    from eventsinkd.daemon.runtime import run_loop, tune_gc

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        return fail(f"invalid config, not starting:\n{exc}")
    setup_logging(cfg.log.level, cfg.log.format)
    tune_gc()
    return run_loop(Daemon(cfg, args.config).serve())


def _wal_state(cfg: Config) -> tuple[str, str | None]:
    """How wal.dir stands, and a warning for the reader when it is not usable."""
    wal = cfg.wal.dir
    if not wal.is_dir():
        return "does not exist (yet)", (
            f"wal.dir {wal} does not exist: the daemon waits for it to appear. "
            "If Nexus already runs, the path is wrong: Nexus's WAL is <its config dir>/wal"
        )
    if not os.access(wal, os.R_OK | os.X_OK):
        return f"NOT readable by uid {os.getuid()}", (
            f"wal.dir {wal} is not readable by uid {os.getuid()}: run eventsinkd as the "
            "Nexus user or a member of its group"
        )
    return "readable", None


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    wal_state, warning = _wal_state(cfg)
    print(f"{args.config}: valid")
    print(
        f"  wal.dir: {cfg.wal.dir} ({wal_state}), start_at {cfg.wal.start_at}, "
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
    if warning is not None:
        sys.stdout.flush()
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0
