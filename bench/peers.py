"""The servers the transports benchmark (``bench.e2e.transports``) delivers to, on 127.0.0.1.

The servers themselves live in :mod:`eventsinkd.devtools.peers` (one module per kind, shared
with the tests); this module runs them for the benchmark and reads what they received.
Two of them are counting peers of our own, each a separate process so that its CPU is not
the daemon's::

    python -m bench.peers otlp      # OTLP/HTTP logs: POST /v1/logs
    python -m bench.peers fluentd   # Fluentd Forward protocol v1 over TCP

Each binds an ephemeral port of 127.0.0.1 and prints ``PORT <port> <stats port> <loop>`` on
stdout; ``GET /__stats`` on the stats port (for otlp the same port) answers ``{"received":
<events>, "requests": <requests or messages>, "errors": <bodies it could not read>, "cpu_s":
<process CPU seconds>, "first_ns": ..., "last_ns": ...}`` (arrival times in
``time.monotonic_ns()``, as ``bench/receiver.py`` reports them). Like the receiver it runs on
uvloop when installed and exits on SIGTERM/SIGINT, when its stdin closes (the parent died) or
after ``--max-seconds``.

- ``otlp`` is an ``aiohttp.web`` server answering 200 with an empty ExportLogsServiceResponse
  in the request's encoding. It counts log records: a protobuf body is parsed with
  opentelemetry-proto's ``ExportLogsServiceRequest.ParseFromString``, a JSON body with orjson
  (the ``logRecords`` of every scope).
- ``fluentd`` is an asyncio TCP server with a ``msgpack.Unpacker`` per connection; it counts
  the events of each Forward, PackedForward or Message mode message and answers
  ``{"ack": <chunk>}`` to every message whose option has one.

The other servers are Debian's and the venv's, run here as child processes with a handle
each (launched by :mod:`eventsinkd.devtools.peers.nats` and ``.rsyslogd``): ``nats-server``
with JetStream (events counted in the stream) and ``rsyslogd`` with only imtcp, imudp or
imrelp and an omfile action (events counted as lines of its file). Every handle
(:class:`Server`) gives the sink's config, what the server received so far and its CPU
seconds. The webhook receiver is ``bench/receiver.py``'s (:class:`Webhook`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

from bench import proc_cpu_s
from bench.common import CHILD_START_TIMEOUT_S, Receiver, http_get
from eventsinkd.common.ports import free_port
from eventsinkd.devtools.peers import fluentd, nats, otlp, rsyslogd
from eventsinkd.devtools.peers.serving import (
    STATS_PATH,
    Counts,
    install_uvloop,
    stop_when_told,
)

# -- the bench's own peers (child side) ------------------------------------------------

PEERS = {"otlp": otlp.start_counting, "fluentd": fluentd.start_counting}


async def serve(kind: str, max_seconds: float, loop_name: str) -> None:
    stop = stop_when_told()
    counts = Counts()
    port, stats_port, close = await PEERS[kind](counts)
    print(f"PORT {port} {stats_port} {loop_name}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    await close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers")
    ap.add_argument("kind", choices=sorted(PEERS))
    ap.add_argument("--max-seconds", type=float, default=900.0, help="exit after this long")
    ap.add_argument("--no-uvloop", action="store_true", help="use asyncio's loop")
    args = ap.parse_args(argv)
    loop_name = install_uvloop(not args.no_uvloop)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.kind, args.max_seconds, loop_name))
    sys.stdout.flush()
    os._exit(0)  # do not wait for the stdin-watching thread


# -- the servers seen from the benchmark (parent side) --------------------------------


class Server(Protocol):
    label: str  # what the tables call it
    program: str  # what runs it, for the tables

    def sink(self, name: str) -> dict[str, Any]:
        """The config of a sink delivering to this server (defaults otherwise)."""

    def received(self) -> int:
        """Events the server has so far."""

    def cpu_s(self) -> float:
        """The server process's CPU seconds (utime+stime) so far."""

    def close(self) -> None: ...


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class Webhook:
    """``bench/receiver.py``'s raw receiver, 0 ms: the webhook transport's server."""

    program = "bench/receiver.py raw"

    def __init__(self, concurrency: int | None = None) -> None:
        self.concurrency = concurrency
        self.label = "webhook" + (f" C={concurrency}" if concurrency else "")
        self.rcv = Receiver(0).__enter__()

    def sink(self, name: str) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": name, "url": self.rcv.url}
        if self.concurrency:
            cfg["concurrency"] = self.concurrency
        return cfg

    def received(self) -> int:
        return int(self.rcv.stats()["received"])

    def cpu_s(self) -> float:
        return float(self.rcv.stats()["cpu_s"])

    def close(self) -> None:
        self.rcv.close()


class Peer:
    """``python -m bench.peers <kind>`` as a child process."""

    def __init__(self, kind: str, label: str, extra: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.label = label
        self.program = f"bench/peers.py {kind}"
        self.extra = extra or {}
        cmd = [sys.executable, "-m", "bench.peers", kind]
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            self.port, self.stats_port, self.loop = self._read_port()
        except BaseException:
            self.close()
            raise

    def _read_port(self) -> tuple[int, int, str]:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(CHILD_START_TIMEOUT_S)
        if not line or not line[0].startswith("PORT "):
            got = line[0].strip() if line else "nothing"
            raise RuntimeError(f"bench.peers {self.kind} did not report its port (got {got!r})")
        _, port, stats_port, loop = line[0].split()
        return int(port), int(stats_port), loop

    def stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(http_get(self.stats_port, STATS_PATH))
        return doc

    def sink(self, name: str) -> dict[str, Any]:
        url = (
            f"http://127.0.0.1:{self.port}"
            if self.kind == "otlp"
            else f"fluentd://127.0.0.1:{self.port}"
        )
        return {"name": name, "type": self.kind, "url": url, **self.extra}

    def received(self) -> int:
        doc = self.stats()
        if doc["errors"]:
            raise RuntimeError(f"bench.peers {self.kind}: {doc['errors']} unreadable request(s)")
        return int(doc["received"])

    def cpu_s(self) -> float:
        return float(self.stats()["cpu_s"])

    def close(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc)


class Nats:
    """``nats-server -js`` from the venv, with a stream on ``nexus.events.>`` (file storage)."""

    label = "nats"

    def __init__(self, root: Path) -> None:
        self.server = nats.NatsPeer(root / "nats")
        self.program = f"nats-server {nats.version(nats.nats_server_binary())} -js"
        asyncio.run(self._start())

    async def _start(self) -> None:
        await self.server.start(timeout_s=15)
        try:
            await nats.add_stream(self.server)
        except BaseException:
            await self.server.stop()
            raise

    def sink(self, name: str) -> dict[str, Any]:
        return {"name": name, "type": "nats", "url": self.server.url}

    def received(self) -> int:
        return asyncio.run(nats.stream_count(self.server))

    def cpu_s(self) -> float:
        return proc_cpu_s(self.server.pid)

    def close(self) -> None:
        self.server.close()


class Rsyslog:
    """Debian's ``rsyslogd -n`` with only imtcp (or imudp, or imrelp) and one omfile action
    (:func:`eventsinkd.devtools.peers.rsyslogd.counting_conf`): events are counted as the
    lines of its file."""

    def __init__(self, root: Path, proto: str = "tcp") -> None:
        exe = rsyslogd.rsyslogd_program()
        self.proto = proto
        self.label = f"syslog {proto.upper()}"  # TCP, UDP, RELP
        self.program = f"rsyslogd {rsyslogd.version(exe)} im{proto} + omfile"
        root = root / f"rsyslog-{proto}"
        root.mkdir(parents=True, exist_ok=True)
        self.out = root / "out.log"
        self.out.touch()
        self.port = free_port()
        self.server = rsyslogd.Rsyslogd(
            exe, root, rsyslogd.counting_conf(proto, self.port, self.out)
        )
        self._lines = 0
        self._offset = 0
        try:
            self.server.start_sync()
        except BaseException:
            self.close()
            raise

    def sink(self, name: str) -> dict[str, Any]:
        scheme = {"tcp": "syslog+tcp", "relp": "syslog+relp"}.get(self.proto, "syslog")
        return {"name": name, "type": "syslog", "url": f"{scheme}://127.0.0.1:{self.port}"}

    def received(self) -> int:
        """Lines in rsyslog's file (read on from where the last call stopped)."""
        with self.out.open("rb") as fh:
            fh.seek(self._offset)
            while chunk := fh.read(8 << 20):
                self._lines += chunk.count(b"\n")
                self._offset += len(chunk)
        return self._lines

    def cpu_s(self) -> float:
        return proc_cpu_s(self.server.pid)

    def close(self) -> None:
        self.server.close()


if __name__ == "__main__":
    main()
