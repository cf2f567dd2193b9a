"""The receiver (``bench/receiver.py``) seen from the benchmarks that use it.

Both the delivery benchmark and the end-to-end one run the receiver as a child process
(:class:`Receiver`), read what it counted (``GET /__stats``, :func:`receiver_doc`) and
measure it alone with the load generator, a second child process (:func:`load_receiver`).
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

CHILD_START_TIMEOUT_S = 15.0


def http_get(port: int, path: str, timeout_s: float = 10.0) -> bytes:
    """The body of ``GET path`` on 127.0.0.1:``port``; anything but 200 raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} on port {port}: HTTP {resp.status}")
        return body
    finally:
        conn.close()


def receiver_doc(port: int, arrivals: bool = False) -> dict[str, Any]:
    """The receiver's ``GET /__stats`` document (with every arrival time if asked)."""
    doc: dict[str, Any] = json.loads(
        http_get(port, "/__stats" + ("?arrivals=1" if arrivals else ""))
    )
    return doc


class Receiver:
    """``python -m bench.receiver`` as a child process; always terminated on exit."""

    def __init__(
        self,
        latency_ms: float,
        impl: str = "raw",
        *,
        record_arrivals: bool = False,
        max_seconds: float = 600.0,
    ) -> None:
        self.latency_ms = latency_ms
        self.impl = impl
        self.record_arrivals = record_arrivals
        self.max_seconds = max_seconds
        self.port = 0
        self.loop = "?"  # the receiver's event loop: asyncio, or uvloop when installed
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stats(self, arrivals: bool = False) -> dict[str, Any]:
        """What the receiver counted so far (:func:`receiver_doc`)."""
        return receiver_doc(self.port, arrivals)

    def __enter__(self) -> Receiver:
        cmd = [
            sys.executable,
            "-m",
            "bench.receiver",
            "--impl",
            self.impl,
            "--latency-ms",
            str(self.latency_ms),
            "--max-seconds",
            str(self.max_seconds),
        ]
        if self.record_arrivals:
            cmd.append("--record-arrivals")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.port, self.loop = self._read_port()
        except BaseException:
            self.close()
            raise
        return self

    def _read_port(self) -> tuple[int, str]:
        assert self.proc is not None and self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(CHILD_START_TIMEOUT_S)
        if not line or not line[0].startswith("PORT "):
            got = line[0].strip() if line else "nothing"
            raise RuntimeError(f"receiver did not report its port (got {got!r})")
        _, port, loop = line[0].split()
        return int(port), loop

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()  # the receiver exits on stdin EOF...
        proc.terminate()  # ...and on SIGTERM
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


# -- the receiver alone ----------------------------------------------------------------


@dataclass(slots=True)
class Capacity:
    impl: str
    loop: str  # the receiver's event loop
    latency_ms: int
    rate: float  # requests/s the load generator got answered
    receiver_cpu_us: float  # receiver CPU per request
    loadgen_cpu_us: float  # load generator CPU per request
    errors: int


def load_receiver(
    rcv: Receiver, connections: int, seconds: float, *, uvloop: bool = False
) -> Capacity:
    """The load generator (a separate process) against ``rcv`` for ``seconds``."""
    before = rcv.stats()
    cmd = [sys.executable, "-m", "bench.receiver", "--load", rcv.url]
    cmd += ["--connections", str(connections), "--seconds", str(seconds), "--warmup", "0.5"]
    cmd += ["--uvloop"] if uvloop else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stderr}")
    after = rcv.stats()
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    # includes the warm-up, like the receiver CPU
    answered = max(1, int(after["requests"]) - int(before["requests"]))
    return Capacity(
        impl=rcv.impl,
        loop=rcv.loop,
        latency_ms=int(rcv.latency_ms),
        rate=float(doc["rate"]),
        receiver_cpu_us=(float(after["cpu_s"]) - float(before["cpu_s"])) / answered * 1e6,
        loadgen_cpu_us=float(doc["cpu_s"]) / max(1, int(doc["requests"])) * 1e6,
        errors=int(doc["errors"]),
    )


def receiver_alone(
    impl: str, latency_ms: int, seconds: float, connections: int, *, uvloop: bool = False
) -> Capacity:
    with Receiver(latency_ms, impl) as rcv:
        return load_receiver(rcv, connections, seconds, uvloop=uvloop)
