"""A RELP client: rsyslog's Reliable Event Logging Protocol, the ``syslog`` command only.

RELP (https://www.rsyslog.com/doc/relp.html, librelp's ``doc/relp.html``) frames every
message as ``TXNR SP COMMAND SP DATALEN [SP DATA] LF`` on one TCP connection. A session opens
with ``open`` (the offers ``relp_version=0``, ``relp_software=...``, ``commands=syslog``),
carries ``syslog`` commands, and ends with ``close``; the server answers each of them with an
``rsp`` frame of the same TXNR whose data starts with a code (``200 OK``, ``500 ...``), and
may end the session itself with ``0 serverclose 0``. TXNRs count from 1 in each session and
wrap from 999,999,999 to 1 (the server refuses any other number and closes the session).

Written by hand because no maintained Python client exists: PyPI has ``pyrelp`` (a binding to
librelp, last released in 2014) and ``relppy`` (a server). The protocol is small; what
matters is the bookkeeping, which is this module.

:class:`RelpClient` keeps one session and a window of messages written and not answered yet
(``relp_window``, 128 by default as in librelp): at most that many are on the wire; the
rest wait their turn. A message is finished when the server answered its TXNR. When the
connection is lost (reset, EOF, ``serverclose``, an answer that is not RELP), every message
not answered yet is written again, in the same order, on a new session with new TXNRs: the
server may have taken some of them already, so rsyslog can get duplicates, never fewer.
The client reconnects by itself with a short backoff as long as someone waits for a message;
a message whose sender stopped waiting (its send timed out) is not written again.

librelp (1.11) counts 999,999,999 on to 1,000,000,000, which its own parser refuses, rather
than wrapping as the specification says. A session that reaches it is closed by rsyslog and
the client resends on a new one: duplicates at worst, never loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence

from eventsinkd import __version__
from eventsinkd.transports.contract import Attempt, Outcome
from eventsinkd.transports.relp_frames import Frame, FrameParser, RelpError, encode_frame, next_txnr

log = logging.getLogger(__name__)
# relp_software is "name,version,URL" in librelp's offers; eventsinkd has no public URL.
OFFERS = b"relp_version=0\nrelp_software=eventsinkd,%b\ncommands=syslog" % __version__.encode()
IDLE_KEEP_S = 60.0  # a session idle this long is reopened before use (middleboxes forget)
RECONNECT_FIRST_S = 0.05  # waits between connection attempts: doubled up to the last
RECONNECT_LAST_S = 1.0
# A batch waits while rsyslog keeps answering (messages queued behind the window of a slow but
# working rsyslog are not failed), but never longer than this many timeouts in all.
MAX_TIMEOUTS = 10
ACKED = Attempt(Outcome.DELIVERED, None, "acked")


def answer(frame: Frame) -> Attempt:
    """What an ``rsp`` to a ``syslog`` command means for its message."""
    status = frame.data.partition(b"\n")[0].decode("utf-8", "replace")
    if status[:3] == "200":
        return ACKED
    return Attempt(Outcome.RETRY_STATUS, None, f"rsyslog answered {status[:200]!r}")


class Pending:
    """One message, until the server answers it (``future``) or its sender gives up."""

    __slots__ = ("abandoned", "future", "message", "session")

    def __init__(self, message: bytes, future: asyncio.Future[Attempt]) -> None:
        self.message = message
        self.future = future
        self.abandoned = False  # nobody waits for it: not to be written again
        self.session: Session | None = None  # the session it was written on, not answered


class Session:
    """One connection after a successful ``open``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser()
        self.txnr = 1
        self.broken = False
        self.used = time.monotonic()
        self.reading: asyncio.Task[None] | None = None

    def take_txnr(self) -> int:
        txnr, self.txnr = self.txnr, next_txnr(self.txnr)
        return txnr

    async def next_frame(self) -> Frame:
        """Read until a frame is complete (only before :meth:`RelpClient._read` takes over)."""
        while True:
            data = await self.reader.read(4096)
            if not data:
                raise ConnectionResetError("rsyslog closed the connection before answering")
            frames = self.parser.feed(data)
            if frames:
                if len(frames) > 1:
                    raise RelpError("rsyslog answered more than was asked")
                return frames[0]


class RelpClient:
    """Sends syslog messages over RELP and tells, per message, what the server answered."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        window: int,
        timeout_s: float,
        name: str = "",
        software: bytes = OFFERS,
    ) -> None:
        self.host, self.port = host, port
        self.name = name  # the sink's, for logs
        self.ssl: ssl.SSLContext | None = None  # RELP over TLS
        self.window = window
        self.timeout_s = timeout_s
        self.offers = software
        self.sessions = 0  # sessions opened
        self.resent = 0  # messages written again after a connection loss
        self.last_error = ""
        self.answered_at = 0.0  # monotonic time of the last answer to a syslog command
        self._queue: deque[Pending] = deque()  # to write, in order (resends first)
        self._unacked: dict[int, Pending] = {}  # txnr -> on the session's wire, in write order
        self._session: Session | None = None
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def deliver(self, messages: Sequence[bytes]) -> list[Attempt]:
        """Send ``messages``; per message the server's answer, or why there is none: a
        batch fails when rsyslog answered nothing at all for ``timeout_s`` (a slow rsyslog
        that keeps answering is waited for, up to :data:`MAX_TIMEOUTS` timeouts)."""
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        pendings = [Pending(m, loop.create_future()) for m in messages]
        self._queue.extend(pendings)
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())
        try:
            await self._wait([p.future for p in pendings])
        finally:  # timed out or cancelled: what is left is not written again
            late = [p for p in pendings if not p.future.done()]
            for p in late:
                p.abandoned = True
        attempts = [p.future.result() if p.future.done() else self._why(p) for p in pendings]
        if late:
            self._gave_up(late)
        return attempts

    async def _wait(self, futures: list[asyncio.Future[Attempt]]) -> None:
        """Until every future is done, or rsyslog answered nothing for ``timeout_s`` (or
        :data:`MAX_TIMEOUTS` of them passed)."""
        timeout = self.timeout_s
        start = time.monotonic()
        deadline = start + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            _, waiting = await asyncio.wait(futures, timeout=left)
            if not waiting:
                return
            futures = list(waiting)
            progress = self.answered_at + timeout  # rsyslog answered someone lately: working
            deadline = min(progress, start + MAX_TIMEOUTS * timeout)
            if self._session is None or deadline <= time.monotonic():
                return

    def _why(self, p: Pending) -> Attempt:
        if p.session is not None or self._session is not None:
            detail = f"no answer from rsyslog within {self.timeout_s}s"
            return Attempt(Outcome.TIMEOUT, None, detail)
        return Attempt(Outcome.CONNECTION, None, self.last_error or "not connected")

    def _gave_up(self, late: list[Pending]) -> None:
        """A message written and unanswered for a whole timeout: the session is stuck (or
        the connection silently gone). Drop it, so the others go again on a new one."""
        session = self._session
        if session is not None and any(p.session is session for p in late):
            self._lost(session, TimeoutError(f"no answer within {self.timeout_s}s"))

    # -- the writer ----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            while self._queue and self._queue[0].abandoned:
                self._queue.popleft()
            if not self._queue:
                await self._wake.wait()
                continue
            session = self._session
            idle = session is not None and time.monotonic() - session.used > IDLE_KEEP_S
            if session is not None and idle and not self._unacked:
                self._lost(session, ConnectionResetError("idle"))
                session = None
            if session is None:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        session = await self._open()
                    failures = 0
                except (OSError, TimeoutError, RelpError) as exc:
                    self.last_error = _describe(exc)
                    failures += 1
                    await asyncio.sleep(min(RECONNECT_LAST_S, RECONNECT_FIRST_S * 2**failures))
                    continue
            wrote = False
            while self._queue and len(self._unacked) < self.window:
                p = self._queue.popleft()
                if p.abandoned:
                    continue
                txnr = session.take_txnr()
                self._unacked[txnr] = p
                p.session = session
                session.writer.write(encode_frame(txnr, b"syslog", p.message))
                wrote = True
            if wrote:
                session.used = time.monotonic()
                try:
                    await session.writer.drain()
                except OSError as exc:
                    self._lost(session, exc)
                    continue
            await self._wake.wait()

    async def _open(self) -> Session:
        tls = self.ssl
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=tls, server_hostname=self.host if tls is not None else None
        )
        session = Session(reader, writer)
        try:
            writer.write(encode_frame(session.take_txnr(), b"open", self.offers))
            await writer.drain()
            frame = await session.next_frame()
            status, _, offers = frame.data.partition(b"\n")
            if frame.txnr != 1 or frame.command != "rsp":
                raise RelpError(f"rsyslog answered open with {frame.command} {frame.txnr}")
            if not status.startswith(b"200"):
                raise RelpError(f"rsyslog refused the session: {status[:200]!r}")
            commands = [v for k, _, v in (x.partition(b"=") for x in offers.split(b"\n"))
                        if k == b"commands"]  # fmt: skip
            if not any(b"syslog" in c.split(b",") for c in commands):
                raise RelpError("rsyslog did not offer the syslog command")
        except BaseException:
            writer.transport.abort()
            raise
        session.reading = asyncio.create_task(self._read(session))
        self._session = session
        self.sessions += 1
        return session

    # -- the reader ----------------------------------------------------------------------

    async def _read(self, session: Session) -> None:
        try:
            while True:
                data = await session.reader.read(65536)
                if not data:
                    raise ConnectionResetError("rsyslog closed the connection")
                for frame in session.parser.feed(data):
                    if frame.command == "serverclose":
                        raise ConnectionResetError("rsyslog closed the session (serverclose)")
                    if frame.command != "rsp":
                        raise RelpError(f"unexpected {frame.command!r} from rsyslog")
                    p = self._unacked.pop(frame.txnr, None)
                    if p is None:
                        raise RelpError(f"rsyslog answered txnr {frame.txnr}, never sent")
                    p.session = None
                    if not p.future.done():
                        p.future.set_result(answer(frame))
                    session.used = self.answered_at = time.monotonic()
                    self._wake.set()  # room in the window
        except (OSError, RelpError) as exc:  # ssl.SSLError is an OSError
            self._lost(session, exc)

    def _lost(self, session: Session, exc: BaseException) -> None:
        """``session`` is over: what it had not answered goes first in line again."""
        if session.broken:
            return
        session.broken = True
        session.writer.transport.abort()
        if session.reading is not None and session.reading is not asyncio.current_task():
            session.reading.cancel()
        if self._session is session:
            self._session = None
        self.last_error = _describe(exc)
        again = [p for p in self._unacked.values() if not p.abandoned]
        for p in self._unacked.values():
            p.session = None
        self._unacked.clear()
        self.resent += len(again)
        self._queue.extendleft(reversed(again))
        if again:  # once per lost session, and only when it held messages
            log.warning(
                "sink %s: RELP session to %s:%d lost (%s); %d unanswered messages go again "
                "on a new session (rsyslog may get some twice)",
                self.name,
                self.host,
                self.port,
                self.last_error,
                len(again),
            )
        self._wake.set()

    async def close(self) -> None:
        """End the session (``close``, if nothing is in flight); waiting senders get a
        CONNECTION attempt."""
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        session, self._session = self._session, None
        if session is not None and not session.broken:
            if not self._unacked and session.reading is not None:
                session.reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session.reading
                with contextlib.suppress(OSError, TimeoutError, RelpError):
                    async with asyncio.timeout(min(self.timeout_s, 2.0)):
                        session.writer.write(encode_frame(session.take_txnr(), b"close"))
                        await session.writer.drain()
                        await session.next_frame()  # its rsp; a serverclose follows
            self._lost(session, ConnectionResetError("closed"))
        closed = Attempt(Outcome.CONNECTION, None, "the sink closed the RELP session")
        for p in self._queue:
            if not p.future.done():
                p.future.set_result(closed)
        self._queue.clear()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
