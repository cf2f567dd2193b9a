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

The connection - the nats-py client, connecting in the background, reconnecting,
credentials, the refusal of plaintext for a tls:// url, the reply subscription
and the stream check when connected - is
:class:`~eventsinkd.transports.nats_connection.NatsConnection`'s; until it is
connected, sends fail as connection errors and the sink pauses as for any
receiver that is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import NO_RESPONDERS_STATUS
from nats.aio.msg import Msg
from nats.js.api import Header

from eventsinkd.common.logs import RateLimitedLog
from eventsinkd.config.sinks import NatsSinkConfig
from eventsinkd.events import Event
from eventsinkd.transports.cloudevents import CloudEvents
from eventsinkd.transports.contract import Attempt, Outcome, all_failed, classify
from eventsinkd.transports.nats_connection import NatsConnection, describe
from eventsinkd.transports.nats_subjects import SubjectTemplate

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
MAX_TRACKED_SUBJECTS = 256  # subjects without a stream remembered (and logged) one by one
LOST = Attempt(Outcome.CONNECTION, None, "connection to NATS lost before the ack")


class _Batch:
    """The replies a batch awaits: one slot per event, filled by the reply subscription."""

    __slots__ = ("done", "left", "replies", "sealed")

    def __init__(self, size: int) -> None:
        self.replies: list[Msg | None] = [None] * size
        self.left = 0  # replies still expected
        self.sealed = False  # every message of the batch is out: done once left is 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class NatsTransport:
    """Publishes batches over a :class:`NatsConnection` and maps each reply to an attempt."""

    def __init__(self, cfg: NatsSinkConfig) -> None:
        self.cfg = cfg
        self.max_batch = cfg.max_batch
        self.subjects = SubjectTemplate(cfg.subject)
        # format: cloudevents: the message is the event in structured mode.
        self._ce = CloudEvents(cfg.cloudevents) if cfg.format == "cloudevents" else None
        self.duplicates = 0  # PubAcks that said the stream already had the message
        self._conn = NatsConnection(cfg, self.subjects, self._on_reply)
        self._waiting: dict[str, tuple[_Batch, int]] = {}  # reply subject -> (batch, index)
        self._token = 0  # the last reply token handed out; never repeats
        self._stored: dict[str, Attempt] = {}  # stream -> its "delivered" attempt
        self._missing: dict[str, str] = {}  # subject -> why no stream took it (logged once)
        self._rlog = RateLimitedLog(log)

    async def open(self) -> None:
        await self._conn.open()

    async def close(self) -> None:
        await self._conn.close()

    @property
    def connected(self) -> bool:
        return self._conn.connected

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        conn = self._conn
        nc, lost, prefix = conn.nc, conn.lost, conn.prefix
        if nc is None or lost is None or not prefix or not nc.is_connected or lost.done():
            detail = f"not connected to NATS ({conn.last_error()})"
            return all_failed(events, Attempt(Outcome.CONNECTION, None, detail))
        batch = _Batch(len(events))
        attempts: list[Attempt | None] = [None] * len(events)
        subjects: list[str] = [""] * len(events)
        content, render, waiting = self.cfg.content, self.subjects.render, self._waiting
        ce = self._ce
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
                body = event.body(content) if ce is None else ce.structured(event, content)
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
            nc = self._conn.nc
            max_payload = nc.max_payload if nc is not None else "?"
            detail = f"{len(body)} bytes: larger than the server's max_payload ({max_payload})"
            return Attempt(Outcome.PERMANENT, None, detail)
        if isinstance(exc, nats.errors.BadSubjectError):
            return Attempt(Outcome.PERMANENT, None, f"not a valid NATS subject: {subject!r}")
        if isinstance(exc, nats.errors.BadHeaderError):
            return Attempt(Outcome.PERMANENT, None, f"not a valid {MSG_ID}: {event.id!r}")
        return Attempt(Outcome.CONNECTION, None, describe(exc))

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
        js = self._conn.js
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
