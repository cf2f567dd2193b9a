"""OTLP/HTTP logs receivers on 127.0.0.1: :class:`OtlpPeer` for the tests, strict about what
it accepts, and :func:`start_counting` for the transports benchmark, which only counts.

Every request is decoded with the official opentelemetry-proto definitions:
protobuf bodies with ``ParseFromString``, JSON bodies with
``json_format.Parse(ignore_unknown_fields=False)``. A JSON body must moreover be
*exactly* the canonical OTLP JSON of what it decodes to
(``MessageToDict(use_integers_for_enums=True)``): lowerCamelCase keys only,
enums as integers, 64-bit integers as strings, nothing at its default value.
``json_format.Parse`` alone would also accept proto field names and enum names,
which OTLP JSON does not allow. A body that fails is recorded in ``errors``
(tests assert there are none) and answered 400.

Answers (status, Retry-After, partial success, error message) come from a
programmable ``behaviour`` and are encoded as the request was, as OTLP asks.

The counting peer answers 200 with an empty ExportLogsServiceResponse in the request's
encoding. It counts log records: a protobuf body is parsed with ``ParseFromString``, a JSON
body with orjson (the ``logRecords`` of every scope), nothing more.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from eventsinkd.common.ports import listening_port
from eventsinkd.devtools.peers.serving import CountingPeer, Counts, serve_app, stats_app

JSON = "application/json"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    retry_after: str | None = None
    rejected: int = 0  # partial success: rejectedLogRecords (2xx only)
    message: str = ""  # partialSuccess.errorMessage (2xx) or google.rpc.Status message


OK = Answer()


@dataclass
class Request:
    content_type: str
    headers: dict[str, str]
    message: ExportLogsServiceRequest
    answer: Answer

    @property
    def records(self) -> list[LogRecord]:
        return [
            record
            for rl in self.message.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]


Behaviour = Callable[[int, Request], Awaitable[Answer]]


async def ok(_n: int, _req: Request) -> Answer:
    return OK


def canonical_json_problem(body: bytes, message: ExportLogsServiceRequest) -> str | None:
    """Why ``body`` is not exactly the OTLP JSON of ``message``, or None if it is."""
    canonical = json_format.MessageToDict(message, use_integers_for_enums=True)
    sent = orjson.loads(body)
    if sent != canonical:
        return f"not canonical OTLP JSON:\n sent      {sent}\n canonical {canonical}"
    return None


def status_protobuf(code: int, message: str) -> bytes:
    """google.rpc.Status {code = 1 (varint), message = 2 (string)} in protobuf wire format,
    written out by hand so that the transport's own decoding is checked against it."""
    text = message.encode()
    assert code < 128 and len(text) < 128, "single-byte varints only"
    return bytes([0x08, code, 0x12, len(text)]) + text


def log_record_id(record: LogRecord) -> str:
    """The webhook-id of the event a record carries (from its payload_id attribute)."""
    attrs = {kv.key: kv.value.string_value for kv in record.attributes}
    return f"{attrs['event_type']}:{attrs['payload_id']}"


@dataclass
class OtlpPeer:
    behaviour: Behaviour = ok
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    port: int = 0
    scheme: str = "http"
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The collector's base URL (the transport posts to {url}/v1/logs)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def accepted(self) -> list[LogRecord]:
        """Records of requests answered 2xx, but the rejected ones of a partial success
        (taken, as the transport documents, to be the last N of their request)."""
        out: list[LogRecord] = []
        for req in self.requests:
            if 200 <= req.answer.status < 300:
                records = req.records
                out.extend(records[: len(records) - req.answer.rejected])
        return out

    def accepted_ids(self) -> list[str]:
        return [log_record_id(r) for r in self.accepted()]

    def all_ids(self) -> list[str]:
        """Webhook-ids of every record received, whatever the answer."""
        return [log_record_id(r) for req in self.requests for r in req.records]

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        content_type = req.content_type
        message = ExportLogsServiceRequest()
        try:
            if content_type == PROTOBUF:
                message.ParseFromString(body)
            elif content_type == JSON:
                json_format.Parse(body, message, ignore_unknown_fields=False)
                problem = canonical_json_problem(body, message)
                if problem:
                    raise ValueError(problem)
            else:
                raise ValueError(f"Content-Type {content_type!r} is not OTLP/HTTP")
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return web.Response(status=400, text=str(exc))
        request = Request(content_type, dict(req.headers), message, OK)
        n = len(self.requests)
        self.requests.append(request)
        answer = await self.behaviour(n, request)
        request.answer = answer
        return self._respond(answer, content_type)

    def _respond(self, answer: Answer, content_type: str) -> web.Response:
        headers = {"Retry-After": answer.retry_after} if answer.retry_after else {}
        body: bytes
        if 200 <= answer.status < 300:
            response = ExportLogsServiceResponse()
            if answer.rejected or answer.message:
                response.partial_success.rejected_log_records = answer.rejected
                response.partial_success.error_message = answer.message
            if content_type == PROTOBUF:
                body = response.SerializeToString()
            else:
                body = json_format.MessageToJson(response).encode()
        elif content_type == PROTOBUF:
            body = status_protobuf(3, answer.message)
        else:
            status: dict[str, Any] = {"code": 3, "message": answer.message}
            body = orjson.dumps(status)
        return web.Response(
            status=answer.status, body=body, headers=headers, content_type=content_type
        )

    async def start(self, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> OtlpPeer:
        app = web.Application()
        app.router.add_post("/v1/logs", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        self.port = listening_port(self._runner)
        self.scheme = "https" if ssl_context is not None else "http"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_records(self, want: set[str], timeout_s: float = 60) -> None:
        """Wait until every webhook-id in ``want`` was accepted; fail loudly if not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while missing := want - set(self.accepted_ids()):
            assert not self.errors, self.errors
            assert loop.time() < deadline, (
                f"{len(missing)} of {len(want)} records not accepted in {timeout_s}s"
            )
            await asyncio.sleep(0.05)


# -- the benchmark's: counting only ---------------------------------------------------


async def start_counting(counts: Counts) -> CountingPeer:
    """OTLP/HTTP logs on ``POST /v1/logs``: records counted, 200 with an empty response."""

    async def logs(req: web.Request) -> web.StreamResponse:
        body = await req.read()
        if req.content_type == PROTOBUF:
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

    app = stats_app(counts)
    app.router.add_post("/v1/logs", logs)
    port, close = await serve_app(app)
    return port, port, close
