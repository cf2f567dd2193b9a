"""``eventsinkd dead-letters`` and ``eventsinkd rewind``: the state directory by the
operator's word (:mod:`eventsinkd.cli.manage`)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

from eventsinkd.cli.common import HelpFormatter, add_config_arg, fail, load
from eventsinkd.cli.manage import TO_FORMS
from eventsinkd.common.logs import setup_logging
from eventsinkd.config.loading import ConfigError


def add_commands(sub: Any) -> None:
    dl = sub.add_parser(
        "dead-letters",
        help="list, replay or purge events given up on",
        description="The events each sink gave up on (a permanent refusal, or max_retries "
        "used up), kept in state_dir. Works whether the daemon runs or not.",
        formatter_class=HelpFormatter,
    )
    dl_sub = dl.add_subparsers(dest="action", required=True, metavar="ACTION")
    dl_list = dl_sub.add_parser(
        "list",
        help="print the dead letters",
        description="Print the dead letters: sink, webhook-id, attempts, last try, last outcome.",
        formatter_class=HelpFormatter,
    )
    dl_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dl_replay = dl_sub.add_parser(
        "replay",
        help="send them again (through the running daemon if there is one)",
        description="Send dead letters again, same webhook-ids; those delivered leave the "
        "store. A running daemon sends them; otherwise this command does. Exit 1 if any failed.",
        formatter_class=HelpFormatter,
    )
    dl_replay.add_argument(
        "--id",
        dest="ids",
        action="append",
        metavar="WEBHOOK_ID",
        help="only these (repeat); default: all",
    )
    dl_purge = dl_sub.add_parser(
        "purge",
        help="delete them",
        description="Delete dead letters for good.",
        formatter_class=HelpFormatter,
    )
    dl_purge.add_argument(
        "--before",
        metavar="TIME",
        help="only those last tried before this RFC 3339 time; default: all",
    )
    for p in (dl_list, dl_replay, dl_purge):
        add_config_arg(p)
        p.add_argument("--sink", metavar="NAME", help="only this sink's letters; default: all")
        p.set_defaults(func=cmd_dead_letters)

    rw = sub.add_parser(
        "rewind",
        help="move a sink's cursor back and deliver again from there",
        description=(
            "Move a sink's cursor (daemon running or not): it delivers from there on, again, "
            "same webhook-ids. A move FORWARD past events the sink has not delivered is "
            "refused with how many it would skip (the memory entries between the two "
            "positions that its filter takes), unless --forward. It also chooses the position "
            "of a sink whose cursor file cannot be used (in block mode the daemon does not "
            "start until then)."
        ),
        formatter_class=HelpFormatter,
    )
    add_config_arg(rw)
    rw.add_argument("--sink", required=True, metavar="NAME", help="the sink whose cursor moves")
    rw.add_argument("--to", required=True, metavar="WHERE", help=f"where to: {TO_FORMS}")
    rw.add_argument(
        "--forward", action="store_true", help="allow skipping events not delivered yet"
    )
    rw.set_defaults(func=cmd_rewind)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from eventsinkd.cli import manage

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        return fail(f"invalid config:\n{exc}")
    try:
        if args.action == "list":
            return manage.list_letters(cfg, args.sink, args.json, sys.stdout)
        if args.action == "purge":
            before = manage.parse_time(args.before) if args.before else None
            return manage.purge_letters(cfg, args.sink, before, sys.stdout)
        return manage.replay_letters(cfg, args.sink, args.ids, sys.stdout)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): main() ends quietly
    except (manage.UsageError, ValueError) as exc:
        return fail(str(exc))
    except (sqlite3.Error, OSError) as exc:
        return fail(f"cannot use the dead-letter store in {cfg.state_dir}: {exc}", 1)


def cmd_rewind(args: argparse.Namespace) -> int:
    from eventsinkd.cli import manage

    setup_logging("warning")
    try:
        return manage.rewind(
            load(args.config),
            args.sink,
            args.to,
            sys.stdout,
            sys.stderr,
            forward=args.forward,
        )
    except ConfigError as exc:
        return fail(f"invalid config:\n{exc}")
    except BrokenPipeError:
        raise
    except manage.UsageError as exc:
        return fail(str(exc))
    except ValueError as exc:  # --to
        return fail(f"--to: {exc}. It takes {TO_FORMS}")
    except OSError as exc:
        return fail(str(exc), 1)
