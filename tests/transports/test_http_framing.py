"""Issue 22's misbehaving receivers against the HTTP sinks' client (transports/client.py and
h1.py): each a raw asyncio socket server on 127.0.0.1 (tests/support/raw_http.py) that answers the
way the rule under test is about. "Delivered" must only ever mean a 2xx to *that* request."""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_harness import entry
from raw_http import Piece, raw_server, raw_server_in_thread

from eventsinkd.config.sinks import OtlpSinkConfig, WebhookSinkConfig
from eventsinkd.events import Event
from eventsinkd.transports.client import HttpClient, ProtocolError
from eventsinkd.transports.contract import Outcome, parse_retry_after
from eventsinkd.transports.otlp import OtlpTransport
from eventsinkd.transports.webhook import WebhookTransport

STATIC = [("Content-Type", "application/json")]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
STRAY_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"


def numbered(n: int) -> bytes:
    """A 200 whose body is the number of the request it answers."""
    body = str(n).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def test_a_stray_200_after_a_503_is_never_taken_for_the_next_requests_answer() -> None:
    """The issue's receiver: 503 to every POST and, 2 ms later, a stray 200 on the same
    kept-alive connection. With the old client 256 of 300 events counted delivered."""
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(lambda _n, _h: [unavailable, 0.002, STRAY_OK]) as srv:
        client = HttpClient(srv.url, STATIC)
        statuses = [(await client.post([], b"{}", 10)).status for _ in range(100)]
        await client.close()
    assert statuses == [503] * 100
    assert srv.connections == 100  # a non-2xx closes its connection: none is reused


async def test_bytes_after_a_200_keep_its_connection_from_being_reused() -> None:
    """Every answer is the number of its request, then a stray 200 2 ms later. The test holds
    the event loop (a blocking sleep) between requests, so the stray is in the socket but not
    yet read by the loop: the client must look at the socket right before writing. (The
    receiver runs in a thread, on a loop of its own, to write while the test's is held.)"""
    with raw_server_in_thread(lambda n, _h: [numbered(n), 0.002, STRAY_OK]) as srv:
        client = HttpClient(srv.url, STATIC, keep_body=True)
        bodies = []
        for _ in range(20):
            bodies.append((await client.post([], b"{}", 10)).body)
            time.sleep(0.05)  # noqa: ASYNC251 - on purpose: the loop must not see the stray
        await client.close()
    assert bodies == [str(n).encode() for n in range(1, 21)]
    assert srv.connections == 20


async def test_a_second_response_in_the_same_read_closes_the_connection() -> None:
    async with raw_server(lambda n, _h: [numbered(n) + STRAY_OK]) as srv:
        client = HttpClient(srv.url, STATIC, keep_body=True)
        bodies = [(await client.post([], b"{}", 10)).body for _ in range(10)]
        await client.close()
    assert bodies == [str(n).encode() for n in range(1, 11)]
    assert srv.connections == 10


async def test_bytes_arriving_on_an_idle_connection_close_it() -> None:
    async with raw_server(lambda n, _h: [OK, 0.01, b"X"] if n == 1 else [OK]) as srv:
        client = HttpClient(srv.url, STATIC)
        assert (await client.post([], b"{}", 10)).status == 200
        await asyncio.sleep(0.2)
        assert (await client.post([], b"{}", 10)).status == 200
        await client.close()
    assert srv.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", id="2000"),
        pytest.param(b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", id="099"),
        pytest.param(b"HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n", id="600"),
        pytest.param(b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", id="2-digits"),
        pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="http-2.0"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", id="cl-0x5"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789", id="cl-1_0"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", id="cl-plus"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            id="cl-conflict",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", id="cl-list"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            id="cl-and-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n",
            id="chunk-minus-2",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            id="chunk-0x5",
        ),
        pytest.param(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", id="unasked-101"),
    ],
)
async def test_a_framing_error_is_a_protocol_error_never_a_status(answer: bytes) -> None:
    async with raw_server(lambda _n, _h: [answer]) as srv:
        client = HttpClient(srv.url, STATIC)
        with pytest.raises(ProtocolError):
            await client.post([], b"{}", 10)
        with pytest.raises(ProtocolError):  # and on a new connection, not a reused one
            await client.post([], b"{}", 10)
        await client.close()
    assert srv.connections == 2


async def test_2000_ok_is_a_retryable_connection_failure_for_the_webhook_sink() -> None:
    answer = b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(lambda _n, _h: [answer]) as srv:
        transport = WebhookTransport(WebhookSinkConfig(name="s", url=srv.url))  # type: ignore[arg-type]
        await transport.open()
        [attempt] = await transport.send([event()])
        await transport.close()
    assert attempt.outcome is Outcome.CONNECTION and attempt.outcome.retryable
    assert "malformed HTTP response" in attempt.detail


async def test_bare_lf_responses_are_read_promptly() -> None:
    """Decided: accepted (llhttp's lenient_optional_cr_before_lf), as curl reads them."""
    answer = b"HTTP/1.1 202 Accepted\nContent-Length: 2\nX-A: b\n\nok"
    async with raw_server(lambda _n, _h: [answer]) as srv:
        client = HttpClient(srv.url, STATIC)
        statuses = [(await client.post([], b"{}", 30)).status for _ in range(3)]
        await client.close()
    assert statuses == [202] * 3
    assert srv.connections == 1


async def test_the_final_head_decides_and_1xx_are_skipped() -> None:
    answer = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
    ]
    async with raw_server(lambda _n, _h: list(answer)) as srv:
        client = HttpClient(srv.url, STATIC)
        resp = await client.post([], b"{}", 10)
        await client.close()
    assert (resp.status, resp.header("Retry-After")) == (503, "3")


@pytest.mark.parametrize(
    ("name", "pieces"),
    [
        # Content-Length longer than what is sent, and the connection left open.
        ("too short", [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"]),
        ("cut off", [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", None]),
        (
            "endless chunks",
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
            + [p for _ in range(200) for p in (b"1\r\nx\r\n", 0.05)],
        ),
        ("slow", [b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\n", 30.0, b"late"]),
    ],
)
async def test_a_body_that_does_not_end_well_keeps_the_status_and_closes(
    name: str, pieces: list[Piece]
) -> None:
    async with raw_server(lambda _n, _h: list(pieces)) as srv:
        client = HttpClient(srv.url, STATIC)
        first = await client.post([], b"{}", 1.0)
        second = await client.post([], b"{}", 1.0)
        await client.close()
    assert 200 <= first.status < 300 and not first.complete, name
    assert second.status == first.status, name
    assert srv.connections == 2, name  # the first connection was not reused


async def test_a_huge_body_is_not_read_past_64_kib() -> None:
    gib = 1 << 30
    piece = b"x" * (256 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % gib
    async with raw_server(lambda _n, _h: [head, *[piece] * (gib // len(piece))]) as srv:
        client = HttpClient(srv.url, STATIC, keep_body=True)
        resp = await client.post([], b"{}", 60)
        await client.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while srv.writers and not srv.writers[0].is_closing() and loop.time() < deadline:
            await asyncio.sleep(0.05)
    assert resp.status == 200 and resp.body is None and not resp.complete
    assert srv.written < 64 * 1024 * 1024  # the client hung up long before a GiB


async def test_after_a_response_that_is_not_2xx_the_connection_is_not_reused() -> None:
    answers = {1: b"HTTP/1.1 429 Slow Down\r\nContent-Length: 0\r\n\r\n", 2: OK, 3: OK}
    async with raw_server(lambda n, _h: [answers[n]]) as srv:
        client = HttpClient(srv.url, STATIC)
        got = [(await client.post([], b"{}", 10)).status for _ in range(3)]
        await client.close()
    assert got == [429, 200, 200]
    assert srv.connections == 2  # the 2xx one was kept


async def test_a_connection_older_than_its_lifetime_is_not_reused() -> None:
    async with raw_server(lambda _n, _h: [OK]) as srv:
        client = HttpClient(srv.url, STATIC, lifetime_s=0.3)
        for _ in range(2):
            assert (await client.post([], b"{}", 10)).status == 200
        await asyncio.sleep(0.5)
        assert (await client.post([], b"{}", 10)).status == 200
        await client.close()
    assert srv.connections == 2


async def test_a_name_with_several_addresses_reaches_the_one_that_answers() -> None:
    """Happy eyeballs (aiohappyeyeballs): "localhost" may resolve to ::1 first, where nothing
    listens; the connection is made to 127.0.0.1 all the same."""
    async with raw_server(lambda _n, _h: [OK]) as srv:
        client = HttpClient(f"http://localhost:{srv.port}/hook", STATIC)
        assert (await client.post([], b"{}", 10)).status == 200
        await client.close()


async def test_a_redirect_is_a_failure_that_says_where_it_pointed() -> None:
    location = b"https://user:hunter2@elsewhere.example/new/hook?token=SECRET123"
    answer = b"HTTP/1.1 308 Permanent Redirect\r\nLocation: %b\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(lambda _n, _h: [answer % location]) as srv:
        transport = WebhookTransport(WebhookSinkConfig(name="s", url=srv.url))  # type: ignore[arg-type]
        await transport.open()
        [attempt] = await transport.send([event()])
        await transport.close()
    assert attempt.outcome is Outcome.PERMANENT
    assert "https://elsewhere.example/new/hook" in attempt.detail
    assert "not followed" in attempt.detail
    assert "hunter2" not in attempt.detail and "SECRET123" not in attempt.detail
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("²", None),
        ("٣", None),
        ("1.5", None),
        ("-1", None),
        ("+3", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 99999 07:28:00 GMT", None),
    ],
)
def test_retry_after_is_ascii_digits_or_an_http_date(value: str, seconds: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(value, now=now) == seconds


async def test_a_retry_after_of_superscript_two_does_not_break_the_webhook_sink() -> None:
    answer = b"HTTP/1.1 503 Busy\r\nRetry-After: \xc2\xb2\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(lambda _n, _h: [answer]) as srv:
        transport = WebhookTransport(WebhookSinkConfig(name="s", url=srv.url))  # type: ignore[arg-type]
        await transport.open()
        [attempt] = await transport.send([event()])
        await transport.close()
    assert (attempt.outcome, attempt.retry_after) == (Outcome.RETRY_STATUS, None)


def event() -> Event:
    return Event("memory_written", entry(1), ("summary",))


async def test_the_otlp_sink_uses_the_same_client_and_rules() -> None:
    answers = {
        1: [b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"],
        2: [b"HTTP/1.1 503 Busy\r\nRetry-After: \xc2\xb2\r\nContent-Length: 0\r\n\r\n"],
        3: [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"],
    }
    async with raw_server(lambda n, _h: answers[n]) as srv:
        cfg = OtlpSinkConfig(name="o", type="otlp", url=f"http://127.0.0.1:{srv.port}")  # type: ignore[arg-type]
        transport = OtlpTransport(cfg)
        await transport.open()
        got = [(await transport.send([event(), event()])) for _ in range(3)]
        await transport.close()
    assert [a.outcome for a in got[0]] == [Outcome.CONNECTION] * 2
    assert [(a.outcome, a.retry_after) for a in got[1]] == [(Outcome.RETRY_STATUS, None)] * 2
    assert [a.outcome for a in got[2]] == [Outcome.DELIVERED] * 2
    assert srv.requests[0][0].startswith(b"POST /v1/logs HTTP/1.1\r\n")
    assert srv.connections == 3  # neither the 2000 nor the 503 left its connection open
