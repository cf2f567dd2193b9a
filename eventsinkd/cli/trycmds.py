"""The commands to try eventsinkd by hand: ``secret``, ``sample-wal``, ``receive``, ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import secrets
import signal
from pathlib import Path
from typing import Any

from eventsinkd.cli.common import HelpFormatter, complete_path, fail
from eventsinkd.common.secrets import SecretError, resolve_secret

SECRET_BYTES = 32  # Standard Webhooks: whsec_ + base64 of 24 to 64 random bytes


def new_secret() -> str:
    """A new Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def add_commands(sub: Any) -> None:
    s = sub.add_parser(
        "secret",
        help="print a new webhook signing secret (whsec_...)",
        description="Print a new Standard Webhooks secret: whsec_ and the base64 of "
        f"{SECRET_BYTES} random bytes. Give it to the sink (secret:, literal or file:/path) "
        "and to the receiver.",
        formatter_class=HelpFormatter,
    )
    s.set_defaults(func=cmd_secret)

    sw = sub.add_parser(
        "sample-wal",
        help="write a sample WAL and a config to try eventsinkd with",
        description="Write DIR/wal (memory writes as Nexus writes them, with HMAC), "
        "DIR/mac.key and DIR/config.yaml, which delivers them to `eventsinkd receive` on "
        "127.0.0.1 (block mode, from the beginning). See docs/try-it.md.",
        formatter_class=HelpFormatter,
    )
    complete_path(
        sw.add_argument("dir", type=Path, metavar="DIR", help="a new (or empty) directory"),
        directory=True,
    )
    sw.add_argument("--events", type=int, default=20, help="memory writes to put in the WAL")
    sw.add_argument(
        "--secret",
        metavar="WHSEC",
        help="the sink's signing secret (literal, env:VAR or file:/path); none: unsigned",
    )
    sw.add_argument(
        "--receiver-port", type=int, default=8080, help="where `eventsinkd receive` listens"
    )
    sw.add_argument("--admin-port", type=int, default=9464, help="the daemon's admin.listen port")
    sw.set_defaults(func=cmd_sample_wal)

    rc = sub.add_parser(
        "receive",
        help="a webhook receiver that verifies and prints events",
        description="A webhook receiver for trying eventsinkd: it checks each request's "
        "signature (with --secret), prints one line per event, and when stopped (Ctrl-C "
        "or SIGTERM) how many arrived.",
        formatter_class=HelpFormatter,
    )
    rc.add_argument("--host", default="127.0.0.1", help="address to listen on")
    rc.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free)")
    rc.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="WHSEC",
        help="whsec_... (literal, env:VAR or file:/path); repeat for rotation; "
        "without: signatures are not checked",
    )
    rc.set_defaults(func=cmd_receive)

    d = sub.add_parser(
        "demo",
        help="writer, daemon and receiver on this machine, live",
        description="Write a WAL as Nexus does, run the real daemon on it and a receiver, "
        "all on 127.0.0.1, and say whether every written event arrived, signed, once.",
        formatter_class=HelpFormatter,
    )
    d.add_argument("--events", type=int, default=5000, help="memory writes to produce")
    d.add_argument("--rate", type=float, default=1000.0, help="writes per second")
    d.add_argument("--keep", action="store_true", help="keep the demo directory")
    d.set_defaults(func=cmd_demo)


def cmd_secret(_args: argparse.Namespace) -> int:
    print(new_secret())
    return 0


def cmd_sample_wal(args: argparse.Namespace) -> int:
    from eventsinkd.devtools.sample import write_sample

    if args.events < 1:
        return fail("--events: give at least 1")
    if args.secret is not None:
        from eventsinkd.config.sinks import decode_whsec

        try:
            decode_whsec(resolve_secret(args.secret))
        except (SecretError, ValueError) as exc:
            return fail(f"--secret: {exc} (`eventsinkd secret` makes one)")
    try:
        write_sample(
            args.dir,
            events=args.events,
            secret=args.secret,
            receiver_port=args.receiver_port,
            admin_port=args.admin_port,
        )
    except (ValueError, OSError) as exc:
        return fail(f"sample-wal: {exc}")
    root = args.dir.resolve()
    print(f"wrote {args.events} memory writes to {root / 'wal'} and {root / 'config.yaml'}")
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from eventsinkd.config.sinks import decode_whsec
    from eventsinkd.devtools.peers.webhook import Receiver

    try:
        keys = [decode_whsec(resolve_secret(s)) for s in args.secret]
    except (SecretError, ValueError) as exc:
        return fail(f"--secret: {exc} (`eventsinkd secret` makes one)")

    async def serve() -> None:
        receiver = Receiver(keys)
        await receiver.start(args.host, args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGTERM too: a receiver started in the background (`&`) ignores SIGINT.
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        check = "verifying signatures" if keys else "NOT verifying signatures (no --secret)"
        print(
            f"listening on http://{args.host}:{receiver.port}/ ({check}); Ctrl-C stops", flush=True
        )
        try:
            await stop.wait()
        finally:
            await receiver.stop()
            print(
                f"received {receiver.unique} event(s), {receiver.duplicates} repeated, "
                f"{receiver.bad_signatures} bad signature(s)",
                flush=True,
            )

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc}", 3)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eventsinkd.devtools.demo import run_demo

    return run_demo(events=args.events, rate=args.rate, keep=args.keep)
