"""eventsinkd: a webhook sidecar for BubbleFish Nexus (command line).

The entry point: it builds the parser from the command groups (``*cmds`` modules, each
adding its commands) and ends every command the same way, a closed pipe included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import shtab

from eventsinkd import __version__
from eventsinkd.cli import askcmds, daemoncmds, statecmds, trycmds, walcmds
from eventsinkd.cli.common import HelpFormatter

# What a shell reports for a command killed by SIGPIPE (`ls | head` gives `ls` this):
# a closed pipe ends a command quietly with this status.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="eventsinkd",
        description="A webhook sidecar for BubbleFish Nexus: tails Nexus's write-ahead log "
        "and delivers its events to webhooks, syslog, OTLP, fluentd and NATS. "
        "`eventsinkd COMMAND --help` describes each command.",
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"eventsinkd {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    daemoncmds.add_commands(sub)
    walcmds.add_commands(sub)
    askcmds.add_commands(sub)
    statecmds.add_commands(sub)
    trycmds.add_commands(sub)
    comp = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or tcsh)",
        description="Print the completion script of a shell, made by shtab from this "
        "command line. Bash: eventsinkd completion bash | sudo tee "
        "/etc/bash_completion.d/eventsinkd; zsh: eventsinkd completion zsh > "
        '"${fpath[1]}/_eventsinkd".',
        formatter_class=HelpFormatter,
    )
    comp.add_argument("shell", choices=shtab.SUPPORTED_SHELLS, help="the shell")
    comp.set_defaults(func=lambda args: _completion(ap, args.shell))
    return ap


def _completion(ap: argparse.ArgumentParser, shell: str) -> int:
    print(shtab.complete(ap, shell=shell))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here for buffered output
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`eventsinkd dead-letters list | head -1`). As the signal
        # module's documentation recommends: no traceback, and no second error when the
        # interpreter flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code
