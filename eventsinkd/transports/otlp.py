"""``type: otlp``: events as OpenTelemetry log records, several per OTLP/HTTP request.

One request per batch: ``POST {url}/v1/logs`` with an ``ExportLogsServiceRequest``
holding one ResourceLogs (``service.name``), one ScopeLogs (``eventsinkd``) and
one LogRecord per event, encoded as protobuf or as OTLP JSON.

The protobuf encoding is built with the official ``opentelemetry-proto`` classes.
The JSON encoding is what orjson makes of the request as plain dicts, and it is
exactly what ``json_format.MessageToDict(request, use_integers_for_enums=True)``
gives for the same request (a test proves it for awkward events), but far
cheaper per event than building the message and converting it (measured: ~7 us
against ~43 us per event as dicts; ~3.5 us assembled from pre-encoded parts, see
:class:`Encoder`). Our records have no trace or span ids, so the two places
where OTLP JSON departs from protobuf's canonical JSON mapping (ids in hex,
enums only as integers) reduce to "severityNumber is an integer".

A record's time is the entry's WAL time; it is left out (0, unknown) when the
WAL timestamp cannot be read or falls outside what a fixed64 of nanoseconds
since 1970 holds (Go's zero time, 0001-01-01, is one).

Outcomes follow https://opentelemetry.io/docs/specs/otlp/#otlphttp-response:

- 2xx: delivered, except that a ``partialSuccess`` with ``rejectedLogRecords`` = N > 0
  means N records were refused for good. The response does not say which; the
  last N events of the batch are marked PERMANENT (dead letters) and the rest
  delivered. ``errorMessage`` goes into their detail.
- 429, 502, 503, 504: RETRY_STATUS, honouring ``Retry-After``.
- Any other status (other 4xx and 5xx, and 3xx: redirects are not followed, the detail
  says where it pointed): PERMANENT for the whole batch, as the spec says not to retry them.
- Timeouts, connection errors (a refusing proxy is one) and malformed responses:
  retryable as for every transport.

Requests go through :mod:`eventsinkd.transports.client`, the client of every HTTP sink.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from typing import Any

import orjson
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber

from eventsinkd import __version__
from eventsinkd.common.logs import RateLimitedLog
from eventsinkd.config.sinks import OtlpSinkConfig
from eventsinkd.events import EVENT_FIELDS, ContentMode, Event
from eventsinkd.transports.client import ProtocolError, Response
from eventsinkd.transports.contract import Attempt, Outcome, all_failed, parse_retry_after
from eventsinkd.transports.http import USER_AGENT, Poster, http_client, status_detail
from eventsinkd.wal.gotime import parse_go_time_ns

log = logging.getLogger(__name__)

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
SCOPE_NAME = "eventsinkd"
SEVERITY_INFO: int = SeverityNumber.SEVERITY_NUMBER_INFO  # 9
SEVERITY_TEXT = "INFO"
# The event's fields carried as log record attributes, in this order.
ATTRIBUTES = EVENT_FIELDS
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})  # the only ones OTLP says to retry
MAX_MESSAGE_CHARS = 200  # of a collector's error message, in a detail


# -- encoding ---------------------------------------------------------------------------

_FIXED64 = 1 << 64  # timeUnixNano is a fixed64: a time before 1970 (or after 2554) is unknown
_ALL_STR = (str,) * len(ATTRIBUTES)
_attribute_values = operator.itemgetter(*ATTRIBUTES)
# Go's UTC RFC 3339 (time.RFC3339Nano): the date and time, and the fraction.


def attributes(event: Event) -> list[tuple[str, str]]:
    """The event's fields as (key, string value) pairs, in :data:`ATTRIBUTES` order."""
    fields = event.fields()
    out = []
    for key in ATTRIBUTES:
        value = fields.get(key)
        if value is not None:
            out.append((key, value if isinstance(value, str) else str(value)))
    return out


def _string_attributes(event: Event) -> tuple[str, ...] | None:
    """The event's fields in :data:`ATTRIBUTES` order, if they are all there and strings (as
    they are in every body eventsinkd makes); None sends it to :func:`attributes`."""
    try:
        values = _attribute_values(event.fields())
    except KeyError:
        return None
    return values if tuple(map(type, values)) == _ALL_STR else None


def body_text(event: Event, content: ContentMode) -> str:
    """The webhook body as the record's string body (it is UTF-8 JSON: nothing is replaced)."""
    return event.body(content).decode("utf-8", "replace")


def time_unix_nano(ns: int | None) -> int:
    """A LogRecord's time_unix_nano: the WAL time, or 0 (unknown) if it has none or it does
    not fit a fixed64 (Go's zero time, 0001-01-01, is before 1970)."""
    return ns if ns is not None and 0 < ns < _FIXED64 else 0


class Encoder:
    """The request bodies of one sink (one content mode and service.name), JSON or protobuf.

    JSON is assembled from bytes: the request around the records and each record's constant
    parts are encoded once (by orjson, from the same dicts the general path builds), and only
    the variable strings are encoded per event. The result is byte for byte what
    ``orjson.dumps`` gives for the whole request built as dicts, which :meth:`json_record`
    still does for a record whose fields are not all strings. Protobuf is built with the
    opentelemetry-proto classes from a record template (severity, attribute keys) copied per
    event; writing the wire format by hand is faster still but is protocol code a library has.
    """

    def __init__(self, content: ContentMode, service_name: str) -> None:
        self.content = content
        self.service_name = service_name
        envelope = orjson.dumps(self.json_request([]))
        self._json_head, marker, self._json_tail = envelope.rpartition(b'"logRecords":[]')
        assert marker, envelope
        self._json_head += b'"logRecords":['
        self._json_tail = b"]" + self._json_tail
        # A record with its variable parts as %b / %d: the general path's encoding of a record
        # whose strings are placeholders, the placeholders then replaced.
        fake: dict[str, Any] = {
            "timeUnixNano": "\x01",
            "observedTimeUnixNano": "\x02",
            "severityNumber": SEVERITY_INFO,
            "severityText": SEVERITY_TEXT,
            "body": {"stringValue": "\x03"},
            "attributes": [{"key": key, "value": {"stringValue": "\x03"}} for key in ATTRIBUTES],
        }
        template = orjson.dumps(fake).replace(b"%", b"%%")
        template = template.replace(b'"\\u0001"', b'"%d"').replace(b'"\\u0002"', b'"%d"')
        self._json_record_timed = template.replace(b'"\\u0003"', b"%b")
        self._json_record_untimed = self._json_record_timed.replace(
            b'{"timeUnixNano":"%d",', b"{", 1
        )
        self._protobuf_template = LogRecord(
            severity_number=SeverityNumber.SEVERITY_NUMBER_INFO, severity_text=SEVERITY_TEXT
        )
        for key in ATTRIBUTES:
            self._protobuf_template.attributes.add(key=key)

    # -- JSON ------------------------------------------------------------------------------

    def json_request(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The request as dicts (OTLP JSON: camelCase keys, 64-bit integers as strings, the
        severity as an integer, fields at their default value left out)."""
        return {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": self.service_name}}
                        ]
                    },
                    "scopeLogs": [
                        {
                            "scope": {"name": SCOPE_NAME, "version": __version__},
                            "logRecords": records,
                        }
                    ],
                }
            ]
        }

    def json_record(self, event: Event) -> dict[str, Any]:
        """One log record as dicts: the general path."""
        record: dict[str, Any] = {}
        wal_ns = time_unix_nano(parse_go_time_ns(event.timestamp))
        if wal_ns:  # unknown = 0 = absent
            record["timeUnixNano"] = str(wal_ns)
        record["observedTimeUnixNano"] = str(event.read_ns)
        record["severityNumber"] = SEVERITY_INFO
        record["severityText"] = SEVERITY_TEXT
        record["body"] = {"stringValue": body_text(event, self.content)}
        record["attributes"] = [
            {"key": key, "value": {"stringValue": value}} for key, value in attributes(event)
        ]
        return record

    def json(self, events: Sequence[Event]) -> bytes:
        """An ExportLogsServiceRequest in OTLP JSON."""
        content = self.content
        wal_ns = parse_go_time_ns
        dumps = orjson.dumps
        timed, untimed = self._json_record_timed, self._json_record_untimed
        records: list[bytes] = []
        for event in events:
            values = _string_attributes(event)
            if values is None:
                records.append(dumps(self.json_record(event)))
                continue
            body = dumps(event.body(content).decode("utf-8", "replace"))
            ns = wal_ns(event.timestamp)
            if ns is not None and 0 < ns < _FIXED64:
                records.append(timed % (ns, event.read_ns, body, *map(dumps, values)))
            else:  # unknown: no timeUnixNano
                records.append(untimed % (event.read_ns, body, *map(dumps, values)))
        return b"".join((self._json_head, b",".join(records), self._json_tail))

    # -- protobuf --------------------------------------------------------------------------

    def request(self, events: Sequence[Event]) -> ExportLogsServiceRequest:
        """The ExportLogsServiceRequest for ``events``, as an opentelemetry-proto message."""
        request = ExportLogsServiceRequest()
        resource_logs = request.resource_logs.add()
        resource = resource_logs.resource
        resource.attributes.add(key="service.name").value.string_value = self.service_name
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.name = SCOPE_NAME
        scope_logs.scope.version = __version__
        add = scope_logs.log_records.add
        template = self._protobuf_template
        content = self.content
        wal_ns = parse_go_time_ns
        for event in events:
            record = add()
            record.CopyFrom(template)
            record.time_unix_nano = time_unix_nano(wal_ns(event.timestamp))
            record.observed_time_unix_nano = event.read_ns
            record.body.string_value = event.body(content).decode("utf-8", "replace")
            values = _string_attributes(event)
            if values is not None:
                for kv, value in zip(record.attributes, values, strict=True):
                    kv.value.string_value = value
            else:  # the general path
                del record.attributes[:]
                attrs = record.attributes
                for key, value in attributes(event):
                    attrs.add(key=key).value.string_value = value
        return request

    def protobuf(self, events: Sequence[Event]) -> bytes:
        serialized: bytes = self.request(events).SerializeToString()
        return serialized


def encode_json(events: Sequence[Event], content: ContentMode, service_name: str) -> bytes:
    """An ExportLogsServiceRequest in OTLP JSON (see :class:`Encoder`)."""
    return Encoder(content, service_name).json(events)


def build_request(
    events: Sequence[Event], content: ContentMode, service_name: str
) -> ExportLogsServiceRequest:
    """The ExportLogsServiceRequest for ``events``, as an opentelemetry-proto message."""
    return Encoder(content, service_name).request(events)


def encode_protobuf(events: Sequence[Event], content: ContentMode, service_name: str) -> bytes:
    return Encoder(content, service_name).protobuf(events)


# -- responses --------------------------------------------------------------------------


def _status_class() -> Any:
    """google.rpc.Status (code, message), the body of an OTLP error response.

    googleapis-common-protos is not a dependency, so its two fields we read are
    declared here, in a pool of our own; ``details`` is skipped as unknown.
    """
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="eventsinkd/google_rpc_status.proto",
        package="google.rpc",
        syntax="proto3",
        message_type=[
            descriptor_pb2.DescriptorProto(
                name="Status",
                field=[
                    field(
                        name="code",
                        number=1,
                        type=field.TYPE_INT32,
                        label=field.LABEL_OPTIONAL,
                        json_name="code",
                    ),
                    field(
                        name="message",
                        number=2,
                        type=field.TYPE_STRING,
                        label=field.LABEL_OPTIONAL,
                        json_name="message",
                    ),
                ],
            )
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


Status = _status_class()


def decode(message: Any, body: bytes, content_type: str) -> bool:
    """Fill ``message`` from a response body of ``content_type``; False if it cannot be read."""
    try:
        if content_type == PROTOBUF:
            message.ParseFromString(body)
        elif content_type == JSON:
            json_format.Parse(body, message, ignore_unknown_fields=True)
        else:
            return False
    except Exception:  # DecodeError, ParseError, UnicodeDecodeError...: not what OTLP says
        return False
    return True


def shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


# -- the transport ----------------------------------------------------------------------


class OtlpTransport:
    """Sends batches of events to an OTLP/HTTP logs endpoint; safe for concurrent send()."""

    def __init__(self, cfg: OtlpSinkConfig) -> None:
        self.cfg = cfg
        self.max_batch = cfg.max_batch
        self._url = cfg.logs_url
        self._encoder = Encoder(cfg.content, cfg.service_name)
        self._encode = self._encoder.json if cfg.encoding == "json" else self._encoder.protobuf
        self._headers = [
            ("Content-Type", JSON if cfg.encoding == "json" else PROTOBUF),
            ("User-Agent", USER_AGENT),
            *cfg.resolved_headers.items(),  # may hold credentials: never logged, never in a detail
        ]
        self._http: Poster | None = None
        self._rlog = RateLimitedLog(log)

    async def open(self) -> None:
        self._http = http_client(self.cfg, self._url, self._headers, keep_body=True)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        """One request for ``events``; never raises for trouble with the collector."""
        assert self._http is not None, "transport not open"
        data = self._encode(events)
        try:
            resp = await self._http.post((), data, self.cfg.timeout_seconds)
        except TimeoutError:
            detail = f"no answer within {self.cfg.timeout_seconds}s"
            return all_failed(events, Attempt(Outcome.TIMEOUT, None, detail))
        except (OSError, ProtocolError) as exc:
            detail = str(exc) or type(exc).__name__
            return all_failed(events, Attempt(Outcome.CONNECTION, None, detail))
        return self._outcome(events, resp, resp.body)

    def _outcome(
        self, events: Sequence[Event], resp: Response, body: bytes | None
    ) -> list[Attempt]:
        status = resp.status
        content_type = (resp.header("Content-Type") or "").partition(";")[0].strip().lower()
        if 200 <= status < 300:
            return self._accepted(events, status, body, content_type)
        detail = status_detail(resp)
        if body:
            error = Status()
            if decode(error, body, content_type) and error.message:
                detail += f": {shorten(error.message)}"
        if status in RETRYABLE_STATUSES:
            retry_after = parse_retry_after(resp.header("Retry-After"))
            return all_failed(events, Attempt(Outcome.RETRY_STATUS, retry_after, detail))
        return all_failed(events, Attempt(Outcome.PERMANENT, None, detail))

    def _accepted(
        self, events: Sequence[Event], status: int, body: bytes | None, content_type: str
    ) -> list[Attempt]:
        delivered = Attempt(Outcome.DELIVERED, None, f"HTTP {status}")
        response = ExportLogsServiceResponse()
        if not body or not decode(response, body, content_type):
            # Empty (a full success), or not an ExportLogsServiceResponse: the 2xx stands.
            return [delivered] * len(events)
        partial = response.partial_success
        rejected = min(int(partial.rejected_log_records), len(events))
        message = shorten(partial.error_message)
        if rejected <= 0:
            if message:  # a warning from the collector; everything was accepted
                self._rlog.log(
                    logging.WARNING,
                    "warning",
                    "sink %s: the collector accepted the records with a warning: %s",
                    self.cfg.name,
                    message,
                )
            return [delivered] * len(events)
        # OTLP does not say which records were refused: the last ``rejected`` are marked.
        detail = f"OTLP partial success: {rejected} of {len(events)} records rejected"
        if message:
            detail += f": {message}"
        refused = Attempt(Outcome.PERMANENT, None, detail)
        return [delivered] * (len(events) - rejected) + [refused] * rejected
