"""``type: nats``: publish each event to a NATS JetStream stream, pipelined.

An event is delivered when the stream acknowledged it (a PubAck). Every message
carries ``Nats-Msg-Id: <webhook-id>``, so JetStream's duplicate window drops an
event published again after a crash, a replay or a retry whose first ack was
lost: within that window the stream holds each event exactly once (a duplicate
ack counts as delivered).

A batch is published in one go and its acks are awaited together, for at most
``timeout_seconds`` from the end of the batch's publishing. The acks come back on
one wildcard subscription per connection, ``_INBOX.<nuid>.*``: each message of a
batch has its own reply subject ``_INBOX.<nuid>.<n>``, ``n`` a counter that never
repeats in the transport's life, so an ack that comes after its batch gave up
(timed out, connection lost) matches nothing and is dropped. nats-py sends the
subscription again on every reconnection, before anything it had buffered.

This is nats-py's core ``publish`` with a reply subject, not ``js.publish``:
that one is a full request per message (a task, a new inbox id from os.urandom,
a ``wait_for`` timer and a PubAck dataclass each), which cost about half the
daemon's CPU per event; and ``js.publish_async`` leaves its future pending
forever when the stream answers with an error (nats-py 2.16, nats-io/nats.py#985).
A JetStream publish is exactly a core publish whose reply is the ack, so the
replies are read here as nats-py's ``js.publish`` reads them: a PubAck
``{"stream", "seq", "duplicate"}``, an ``{"error": {"code", "err_code",
"description"}}``, or the server's "no responders" status (503, no stream takes
the subject).

nats-py keeps the connection: it reconnects forever, to any server of the
cluster. ``open()`` waits up to ``timeout_seconds`` for the first connection and
then leaves it to the background, so a server that is down when eventsinkd
starts does not hold it up; until connected, sends fail as connection errors and
the sink pauses as for any receiver that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import NO_RESPONDERS_STATUS
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import Header

from eventsinkd.delivery.outcome import Outcome, classify
from eventsinkd.events import Event
from eventsinkd.ratelimit import RateLimitedLog
from eventsinkd.secrets import SecretError, resolve_secret
from eventsinkd.sinkconfig import NatsSinkConfig
from eventsinkd.transports import Attempt, all_failed
from eventsinkd.transports.nats_subjects import SubjectTemplate
from eventsinkd.transports.tls import ssl_context

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
RECONNECT_WAIT_S = 2.0  # between two attempts at the same server (nats-py's default)
PING_INTERVAL_S = 20  # a silently dead connection is noticed within ~1 minute
MAX_TRACKED_SUBJECTS = 256  # subjects without a stream remembered (and logged) one by one
_REFUSAL = re.compile(r"authori[sz]ation|authentication|offers no TLS|cannot resolve the", re.I)
LOST = Attempt(Outcome.CONNECTION, None, "connection to NATS lost before the ack")
PLAINTEXT = "the NATS server offers no TLS but the sink's url asks for tls://"


class _Batch:
    """The replies a batch awaits: one slot per event, filled by the reply subscription."""

    __slots__ = ("done", "left", "replies", "sealed")

    def __init__(self, size: int) -> None:
        self.replies: list[Msg | None] = [None] * size
        self.left = 0  # replies still expected
        self.sealed = False  # every message of the batch is out: done once left is 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class NatsTransport:
    def __init__(self, cfg: NatsSinkConfig) -> None:
        self.cfg = cfg
        self.max_batch = cfg.max_batch
        self.subjects = SubjectTemplate(cfg.subject)
        self.duplicates = 0  # PubAcks that said the stream already had the message
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._replies: Subscription | None = None  # <prefix>*: every ack of this connection
        self._prefix = ""  # "_INBOX.<nuid>."
        self._waiting: dict[str, tuple[_Batch, int]] = {}  # reply subject -> (batch, index)
        self._token = 0  # the last reply token handed out; never repeats
        self._stored: dict[str, Attempt] = {}  # stream -> its "delivered" attempt
        self._up = asyncio.Event()
        self._lost: asyncio.Future[None] | None = None  # done when this connection drops
        self._connecting: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._missing: dict[str, str] = {}  # subject -> why no stream took it (logged once)
        self._rlog = RateLimitedLog(log)
        self._closing = False
        self._error = "no answer yet"  # the last connection error nats-py reported
        self._refusal: str | None = None  # credentials (or plaintext) refused since connected
        self._wants_tls = any(url.startswith("tls://") for url in cfg.url)

    # -- connection ----------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return
        self._closing = False
        nc = self._nc = NATS()
        options = self._connect_options()
        self._connecting = asyncio.create_task(
            self._connect(nc, options), name=f"nats-connect-{self.cfg.name}"
        )
        # A short wait for the first connection (a replay sends right after open());
        # a server that is down does not hold the daemon up: sends fail until it is back.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), self.cfg.timeout_seconds)
        if not self._up.is_set() and not self._connecting.done():
            log.warning(
                "sink %s: not connected to NATS %s yet (%s); connecting in the background",
                self.cfg.name,
                self.cfg.target,
                self._last_error(),
            )

    def _connect_options(self) -> dict[str, Any]:
        cfg = self.cfg
        options: dict[str, Any] = {
            "servers": list(cfg.url),
            "name": f"eventsinkd/{cfg.name}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # forever; also for the first connection
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "connect_timeout": max(1, round(cfg.timeout_seconds)),
            "ping_interval": PING_INTERVAL_S,
            "max_outstanding_pings": 3,
            # Used for tls:// servers and for any server that requires TLS.
            "tls": ssl_context(cfg.tls),
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        if cfg.creds_file is not None:
            options["user_credentials"] = str(cfg.creds_file)
        # Secrets are resolved at each (re)connection, so a rotated file: secret is picked up.
        if cfg.token is not None:
            options["token"] = self._secret_callback("token", cfg.token)
        if cfg.user is not None and cfg.password is not None:
            options["user"] = cfg.user
            options["password"] = self._secret_callback("password", cfg.password)
        return options

    def _secret_callback(self, what: str, ref: str) -> Callable[[], str]:
        """A credential for nats-py, resolved when it connects (never over plaintext when the
        url says tls://); a failure is a connection error, which nats-py retries, and its text
        never holds the secret."""

        def resolve() -> str:
            if self._plaintext():
                raise nats.errors.Error(PLAINTEXT)
            try:
                return resolve_secret(ref)
            except SecretError as exc:
                raise nats.errors.Error(f"cannot resolve the {what}: {exc}") from None

        return resolve

    def _plaintext(self) -> bool:
        """True when the sink asks for TLS (a tls:// url) and the server offers none.

        nats-py upgrades to TLS only when the server's INFO requires it, and would
        otherwise carry on in plaintext whatever the url's scheme says."""
        if not self._wants_tls or self._nc is None:
            return False
        info = getattr(self._nc, "_server_info", None)  # the INFO nats-py acted on
        return not (isinstance(info, dict) and info.get("tls_required"))

    async def _connect(self, nc: NATS, options: dict[str, Any]) -> None:
        try:
            await nc.connect(**options)  # tries until it connects (max_reconnect_attempts -1)
        except ImportError as exc:  # creds_file: nats-py needs the nkeys package for it
            self._error = f"creds_file needs the {exc.name} package (pip install 'nats-py[nkeys]')"
            log.error("sink %s: cannot connect to NATS: %s", self.cfg.name, self._error)
            return
        except Exception as exc:  # nats-py gave up (it should not): say so, sends keep failing
            self._error = _describe(exc)
            log.error("sink %s: cannot connect to NATS: %s", self.cfg.name, self._error)
            return
        await self._connected(nc)

    async def _connected(self, nc: NATS) -> None:
        if self._plaintext():
            self._error = PLAINTEXT
            log.error("sink %s: %s: not publishing over it", self.cfg.name, PLAINTEXT)
            return
        if self._js is None:  # for the stream checks (requests, on nats-py's own inbox)
            self._js = nc.jetstream(timeout=self.cfg.timeout_seconds)
        if self._replies is None:  # one for the client's life: nats-py renews it on reconnect
            prefix = f"{nc.new_inbox()}."
            try:
                self._replies = await nc.subscribe(f"{prefix}*", cb=self._on_reply)
            except (nats.errors.Error, OSError) as exc:  # lost again already: the next try
                self._error = _describe(exc)
                return
            self._prefix = prefix
        self._lost = asyncio.get_running_loop().create_future()
        self._refusal = None
        self._up.set()
        url = nc.connected_url
        log.info(
            "sink %s: connected to NATS %s", self.cfg.name, url.netloc if url else self.cfg.target
        )
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._check_stream())

    async def _on_reconnected(self) -> None:
        if self._nc is not None:
            await self._connected(self._nc)

    async def _on_disconnected(self) -> None:
        if self._up.is_set() and not self._closing:
            self._up.clear()
            log.warning(
                "sink %s: disconnected from NATS (%s); reconnecting",
                self.cfg.name,
                self._last_error(),
            )
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _on_closed(self) -> None:
        await self._on_disconnected()

    async def _on_error(self, exc: Exception) -> None:
        self._error = _describe(exc)
        if _REFUSAL.search(self._error):
            self._refusal = self._error
        # Connection attempts fail every few seconds while a server is down: rate-limited.
        self._rlog.log(logging.WARNING, "error", "sink %s: NATS: %s", self.cfg.name, _describe(exc))

    def _last_error(self) -> str:
        """The last error, and the server's refusal if one came since the last connection: a
        server that refuses the credentials may also just reset the next attempt."""
        if self._refusal is None or self._refusal == self._error:
            return self._error
        return f"{self._error}; before that: {self._refusal}"

    async def _check_stream(self) -> None:
        """Say at once, not at the first event, when no stream takes the sink's subjects."""
        js = self._js
        if js is None:
            return
        probe = self.subjects.probe
        try:
            stream = await js.find_stream_name_by_subject(probe)
        except nats.js.errors.NotFoundError:
            log.error(
                "sink %s: no JetStream stream takes subject %s; events wait until one does "
                "(create one, e.g. nats stream add NEXUS --subjects '%s')",
                self.cfg.name,
                probe,
                self.subjects.suggestion,
            )
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            log.error(
                "sink %s: JetStream is not available on NATS %s (start nats-server with -js); "
                "events wait until it is",
                self.cfg.name,
                self.cfg.target,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.warning(
                "sink %s: cannot check which stream takes %s: %s",
                self.cfg.name,
                probe,
                _describe(exc),
            )
        else:
            log.info("sink %s: subject %s goes to stream %s", self.cfg.name, probe, stream)

    async def close(self) -> None:
        self._closing = True
        for task in (self._connecting, self._checking):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._connecting = self._checking = None
        nc, self._nc, self._js = self._nc, None, None
        self._replies, self._prefix = None, ""
        self._up.clear()
        if nc is not None and not nc.is_closed:
            # AssertionError: nats-py's close() of a client whose connect() never got going.
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError, AssertionError):
                await nc.close()

    # -- sending -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        nc, lost, prefix = self._nc, self._lost, self._prefix
        if nc is None or lost is None or not prefix or not nc.is_connected or lost.done():
            detail = f"not connected to NATS ({self._last_error()})"
            return all_failed(events, Attempt(Outcome.CONNECTION, None, detail))
        batch = _Batch(len(events))
        attempts: list[Attempt | None] = [None] * len(events)
        subjects: list[str] = [""] * len(events)
        content, render, waiting = self.cfg.content, self.subjects.render, self._waiting
        replies: list[str] = []
        try:
            # Every message goes out at once (nats-py buffers them and its flusher writes
            # them together), each with its own reply subject; then the acks come together.
            for i, event in enumerate(events):
                try:
                    subject = subjects[i] = render(event)
                except (ValueError, KeyError, TypeError) as exc:  # a body not a JSON object
                    detail = f"cannot make its subject: {exc}"
                    attempts[i] = Attempt(Outcome.PERMANENT, None, detail)
                    continue
                self._token += 1  # here, not batched: a publish that waits lets others run
                reply = f"{prefix}{self._token}"
                waiting[reply] = (batch, i)
                replies.append(reply)
                batch.left += 1
                body = event.body(content)
                try:
                    await nc.publish(subject, body, reply=reply, headers={MSG_ID: event.id})
                except (nats.errors.Error, OSError, TimeoutError) as exc:
                    del waiting[reply]
                    batch.left -= 1
                    attempts[i] = self._refused(exc, event, subject, body)
            batch.sealed = True
            if batch.left:  # one deadline for the whole batch
                await asyncio.wait(
                    (batch.done, lost),
                    timeout=self.cfg.timeout_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            if batch.left:  # some unanswered: an ack that comes later is dropped
                for reply in replies:
                    waiting.pop(reply, None)
        out: list[Attempt] = []
        for i, attempt in enumerate(attempts):
            if attempt is None:
                msg = batch.replies[i]
                if msg is not None:
                    attempt = self._ack(msg, subjects[i])
                    if attempt is None:  # no responders: no stream takes the subject
                        detail = await self._no_stream(subjects[i])
                        attempt = Attempt(Outcome.RETRY_STATUS, None, detail)
                elif lost.done():
                    attempt = LOST
                else:
                    timeout = self.cfg.timeout_seconds
                    detail = f"no ack from the stream within {timeout}s ({subjects[i]})"
                    attempt = Attempt(Outcome.TIMEOUT, None, detail)
            out.append(attempt)
        return out

    async def _on_reply(self, msg: Msg) -> None:
        """A reply on the connection's inbox: to its batch's slot, or dropped if it gave up."""
        waiter = self._waiting.pop(msg.subject, None)
        if waiter is None:  # late (its batch timed out or lost its connection) or foreign
            return
        batch, i = waiter
        batch.replies[i] = msg
        batch.left -= 1
        if not batch.left and batch.sealed and not batch.done.done():
            batch.done.set_result(None)

    def _ack(self, msg: Msg, subject: str) -> Attempt | None:
        """What the reply to one publish says, read as ``js.publish`` reads it; None: the
        server's "no responders" (nothing, so no stream, takes the subject)."""
        data = msg.data
        if not data:  # a status from the server, not an answer from a stream
            headers = msg.headers or {}
            status = headers.get(Header.STATUS, "")
            if status == NO_RESPONDERS_STATUS:
                return None
            outcome = classify(int(status)) if status.isdigit() else Outcome.RETRY_STATUS
            description = headers.get(Header.DESCRIPTION, "no description")
            detail = f"NATS status {status or '?'} ({description}) for {subject}"
            return Attempt(_failed(outcome), None, detail)
        try:
            ack = orjson.loads(data)
        except orjson.JSONDecodeError:
            ack = None
        if not isinstance(ack, dict):
            return _not_an_ack(subject, data)
        error = ack.get("error")
        if error is not None:
            if not isinstance(error, dict):
                error = {"description": error}
            code = error.get("code")
            outcome = classify(code) if isinstance(code, int) and code else Outcome.RETRY_STATUS
            detail = f"JetStream error {code}/{error.get('err_code')}: {error.get('description')}"
            return Attempt(_failed(outcome), None, detail)
        stream, seq = ack.get("stream"), ack.get("seq")
        if stream is None or seq is None:
            return _not_an_ack(subject, data)
        if ack.get("duplicate"):
            self._duplicate()
        if self._missing and subject in self._missing:
            del self._missing[subject]
            log.info("sink %s: stream %s takes subject %s", self.cfg.name, stream, subject)
        stored = self._stored.get(stream)
        if stored is None:  # one per stream, not one per event: nothing reads it but a human
            stored = self._stored[stream] = Attempt(Outcome.DELIVERED, None, f"stored in {stream}")
        return stored

    def _refused(self, exc: BaseException, event: Event, subject: str, body: bytes) -> Attempt:
        """What nats-py's refusal to publish an event means."""
        if isinstance(exc, nats.errors.MaxPayloadError):
            max_payload = self._nc.max_payload if self._nc is not None else "?"
            detail = f"{len(body)} bytes: larger than the server's max_payload ({max_payload})"
            return Attempt(Outcome.PERMANENT, None, detail)
        if isinstance(exc, nats.errors.BadSubjectError):
            return Attempt(Outcome.PERMANENT, None, f"not a valid NATS subject: {subject!r}")
        if isinstance(exc, nats.errors.BadHeaderError):
            return Attempt(Outcome.PERMANENT, None, f"not a valid {MSG_ID}: {event.id!r}")
        return Attempt(Outcome.CONNECTION, None, _describe(exc))

    def _duplicate(self) -> None:
        self.duplicates += 1
        self._rlog.log(
            logging.INFO,
            "duplicate",
            "sink %s: %d event(s) so far were already in the stream (same Nats-Msg-Id "
            "within its duplicate window): not stored again",
            self.cfg.name,
            self.duplicates,
        )

    async def _no_stream(self, subject: str) -> str:
        """Why nothing answered a publish to ``subject``; found out and logged once per outage."""
        known = self._missing.get(subject)
        if known is not None:
            return known
        detail = (
            f"no JetStream stream takes subject {subject} (create one, e.g. `nats stream add` "
            f"with --subjects '{self.subjects.suggestion}')"
        )
        if len(self._missing) >= MAX_TRACKED_SUBJECTS:
            return detail
        self._missing[subject] = detail
        js = self._js
        stream = None
        if js is not None:
            try:
                stream = await js.find_stream_name_by_subject(subject)
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
                detail = (
                    f"JetStream is not available on the NATS server: no stream can take "
                    f"subject {subject} (start nats-server with -js)"
                )
            except (nats.errors.Error, OSError, TimeoutError):
                pass  # NotFoundError (the likely case) or no answer: the first guess stands
        if stream is not None:  # a stream takes it but did not answer (starting, recovering)
            detail = f"stream {stream} takes subject {subject} but did not answer"
            log.warning("sink %s: %s", self.cfg.name, detail)
        else:
            log.error("sink %s: %s; the sink waits and nothing is lost", self.cfg.name, detail)
        if subject in self._missing:
            self._missing[subject] = detail
        return detail


def _failed(outcome: Outcome) -> Outcome:
    """An error reply is never a delivery, whatever its code says."""
    return Outcome.RETRY_STATUS if outcome is Outcome.DELIVERED else outcome


def _not_an_ack(subject: str, data: bytes) -> Attempt:
    """Something else answers on the subject (a service, not a stream): retried, not lost."""
    detail = f"not a JetStream ack (is something else answering on {subject}?): {data[:80]!r}"
    return Attempt(Outcome.RETRY_STATUS, None, detail)


def _describe(exc: BaseException) -> str:
    """A short text for an exception from nats-py (never holds a credential)."""
    text = str(exc).strip()
    if not text or text == "nats: ":
        return type(exc).__name__
    return text.removeprefix("nats: ")
