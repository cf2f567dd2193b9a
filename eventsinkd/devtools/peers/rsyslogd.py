"""Debian's rsyslogd as a receiver on 127.0.0.1, for the tests and the transports benchmark.

It runs in the foreground (``-n``) with a config, work directory and pid file of its own:
no system socket (imuxsock is not loaded), only the inputs asked for. Two configs, one
launcher (:class:`Rsyslogd`):

- :func:`fields_conf` (the tests'): imtcp and imudp (and optionally imrelp, with TLS) and one
  omfile action per input kind that writes, per message, the raw message and rsyslog's own
  parse of it (JSON lines).
- :func:`counting_conf` (the benchmark's): one input and one omfile action with rsyslog's
  default template, facility local0 only (the sink's default; rsyslogd's own messages are
  facility syslog), so events are counted as lines. Its imrelp answers once a message is in
  the main (in-memory) queue.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventsinkd.devtools.peers.process import ServerProcess, find_program, tcp_listening, udp_bound


def rsyslogd_program() -> str:
    """/usr/sbin/rsyslogd (or one on PATH); MissingProgram if there is none."""
    return find_program("rsyslogd", "Debian package rsyslog; imrelp: rsyslog-relp")


def version(exe: str) -> str:
    """rsyslogd's version (for the benchmark's tables)."""
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, check=False)
    words = out.stdout.split()
    return words[1].rstrip(",") if len(words) > 1 else "?"


@dataclass(frozen=True)
class Conf:
    """The text of an rsyslog.conf without its ``global()`` line, and the ports rsyslogd
    is ready once it listens on."""

    body: str
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()


_TEMPLATE_FIELDS = {
    "raw": "rawmsg",
    "version": "protocol-version",
    "pri": "pri",
    "app": "app-name",
    "msgid": "msgid",
    "sd": "structured-data",
    "msg": "msg",
    "input": "inputname",
}


def fields_conf(
    out: Path,
    relp_out: Path,
    tcp_port: int,
    udp_port: int,
    relp_port: int | None = None,
    relp_tls: tuple[Path, Path] | None = None,
) -> Conf:
    """imtcp on ``tcp_port`` and imudp on ``udp_port`` into ``out``.

    With ``relp_port``, imrelp too, into its own ruleset and file (``relp_out``). That
    ruleset's queue is ``Direct``: imrelp answers a message once it is in the ruleset's queue,
    so only a Direct queue makes "answered" mean "written to the file" - what a test that
    kills rsyslogd and counts the file needs. (Behind the main in-memory queue, a kill -9
    loses what was answered and not written yet.)
    """
    props = "\n".join(
        f'  property(outname="{k}" name="{v}" format="jsonf")' for k, v in _TEMPLATE_FIELDS.items()
    )
    tls = ""
    if relp_tls is not None:  # the certificate is its own CA; clients need one it signed
        cert, key = relp_tls
        tls = (
            f' tls="on" tls.cacert="{cert}" tls.mycert="{cert}" tls.myprivkey="{key}"'
            ' tls.authmode="certvalid"'
        )
    relp = (
        'module(load="imrelp")\n'
        'ruleset(name="relp" queue.type="Direct") {\n'
        f'  action(type="omfile" file="{relp_out}" template="fields")\n'
        "}\n"
        f'input(type="imrelp" address="127.0.0.1" port="{relp_port}" ruleset="relp"{tls})\n'
    )
    body = (
        'module(load="imtcp")\n'
        'module(load="imudp")\n'
        f'template(name="fields" type="list" option.jsonf="on") {{\n{props}\n}}\n'
        'ruleset(name="in") {\n'
        f'  action(type="omfile" file="{out}" template="fields")\n'
        "}\n"
        f'input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="in")\n'
        f'input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="in")\n'
        + (relp if relp_port is not None else "")
    )
    tcp = (tcp_port,) if relp_port is None else (tcp_port, relp_port)
    return Conf(body, tcp_ports=tcp, udp_ports=(udp_port,))


def counting_conf(proto: str, port: int, out: Path) -> Conf:
    """Only im``proto`` (tcp, udp or relp) on ``port``, facility local0 into ``out``."""
    body = (
        f'module(load="im{proto}")\n'
        f'input(type="im{proto}" address="127.0.0.1" port="{port}")\n'
        f'local0.* action(type="omfile" file="{out}")\n'
    )
    if proto == "udp":
        return Conf(body, udp_ports=(port,))
    return Conf(body, tcp_ports=(port,))


class Rsyslogd:
    """``rsyslogd -n`` with ``conf`` in ``root`` (its log: ``root/rsyslogd.log``)."""

    def __init__(self, exe: str, root: Path, conf: Conf) -> None:
        self.exe = exe
        self.root = root
        self.ready_ports = conf
        self.log = root / "rsyslogd.log"
        (root / "work").mkdir(parents=True, exist_ok=True)
        self.conf = root / "rsyslog.conf"
        self.conf.write_text(
            f'global(workDirectory="{root / "work"}" maxMessageSize="64k")\n' + conf.body
        )
        self.pid_file = root / "rsyslogd.pid"
        argv = [exe, "-n", "-f", str(self.conf), "-i", str(self.pid_file)]
        self.process = ServerProcess(argv, self.log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running process (to signal it), None before the first start."""
        return self.process.proc

    def ready(self) -> bool:
        conf = self.ready_ports
        return all(udp_bound(p) for p in conf.udp_ports) and all(
            tcp_listening(p) for p in conf.tcp_ports
        )

    async def start(self, timeout_s: float = 30) -> None:
        self.process.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.ready():
            assert self.process.running, f"rsyslogd exited:\n{self.process.log_text()}"
            assert loop.time() < deadline, f"rsyslogd not listening:\n{self.process.log_text()}"
            await asyncio.sleep(0.05)

    def start_sync(self, timeout_s: float = 15) -> None:
        """:meth:`start` for code without an event loop (the benchmarks)."""
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.process.running:
                raise RuntimeError(f"rsyslogd exited while starting:\n{self.process.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rsyslogd not listening after {timeout_s:g} s")
            time.sleep(0.05)

    async def stop(self) -> None:
        await self.process.stop(15)

    def close(self) -> None:
        self.process.close()

    async def kill(self) -> None:
        """SIGKILL: no serverclose, no flush, connections reset by the kernel."""
        await self.process.kill()
        self.pid_file.unlink(missing_ok=True)  # left behind by the kill


class FieldsRsyslogd(Rsyslogd):
    """The tests' rsyslogd (:func:`fields_conf`), with what it wrote read back."""

    def __init__(
        self,
        exe: str,
        root: Path,
        tcp_port: int,
        udp_port: int,
        relp_port: int | None = None,
        relp_tls: tuple[Path, Path] | None = None,  # certificate and key: imrelp over TLS
    ) -> None:
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.relp_port = relp_port
        self.out = root / "received.jsonl"
        self.relp_out = root / "relp.jsonl"
        conf = fields_conf(self.out, self.relp_out, tcp_port, udp_port, relp_port, relp_tls)
        super().__init__(exe, root, conf)

    @property
    def tcp_url(self) -> str:
        return f"syslog+tcp://127.0.0.1:{self.tcp_port}"

    @property
    def udp_url(self) -> str:
        return f"syslog://127.0.0.1:{self.udp_port}"

    def records(self, out: Path | None = None) -> list[dict[str, Any]]:
        """Every message written so far (to ``out``, by default the imtcp/imudp file):
        the raw message and rsyslog's parse of it."""
        out = self.out if out is None else out
        if not out.exists():
            return []
        lines = out.read_bytes().split(b"\n")
        return [json.loads(line) for line in lines[:-1]]  # the last one may be incomplete

    def relp_records(self) -> list[dict[str, Any]]:
        return self.records(self.relp_out)
