"""The HTTP/1.1 client of the HTTP sinks (eventsinkd/transports/client.py, h1.py) against
real servers on 127.0.0.1: raw ones that answer exactly as scripted (tests/support/raw_http.py:
framing, keep-alive, closes), an aiohttp one over TLS. The misbehaving receivers of issue 22
are in tests/transports/test_http_framing.py."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from raw_http import RawServer, raw_server

from eventsinkd.config.options import TlsConfig
from eventsinkd.devtools.peers.webhook import https_receiver
from eventsinkd.transports.client import HttpClient, ProtocolError
from eventsinkd.transports.tls import ssl_context

OK = b"HTTP/1.1 204 No Content\r\n\r\n"
STATIC = [("Content-Type", "application/json"), ("User-Agent", "eventsinkd/test")]


async def post(pool: HttpClient, wid: str = "memory_written:p1", timeout_s: float = 10) -> int:
    resp = await pool.post([("webhook-id", wid)], b'{"a":1}', timeout_s)
    return resp.status


def pool_for(srv: RawServer, path: str = "/hook", **kw: object) -> HttpClient:
    return HttpClient(f"http://127.0.0.1:{srv.port}{path}", STATIC, **kw)  # type: ignore[arg-type]


async def test_a_kept_connection_carries_every_request_and_the_request_is_exact() -> None:
    async with raw_server(lambda _n, _h: [OK]) as srv:
        pool = pool_for(srv, "/hook?x=1")
        assert [await post(pool, f"memory_written:p{i}") for i in range(5)] == [204] * 5
        await pool.close()
    assert srv.connections == 1
    head, body = srv.requests[0]
    assert body == b'{"a":1}'
    assert head == (
        b"POST /hook?x=1 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{srv.port}\r\n".encode()
        + b"Content-Type: application/json\r\nUser-Agent: eventsinkd/test\r\n"
        b"webhook-id: memory_written:p0\r\nContent-Length: 7\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("name", "response", "reused"),
    [
        ("content-length", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], True),
        (
            "chunked, extension, trailer",
            [
                b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5;ext=1\r\nhello\r\n",
                b"6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            ],
            True,
        ),
        (
            "1xx first",
            [
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            ],
            True,
        ),
        (
            "connection: close",
            [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", None],
            False,
        ),
        ("HTTP/1.0", [b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"], False),
        ("body to the close", [b"HTTP/1.1 200 OK\r\n\r\nall of it", None], False),
        ("one byte at a time", [bytes([b]) for b in b"HTTP/1.1 204 No\r\nA: b\r\n\r\n"], True),
    ],
)
async def test_responses_framed_every_way_http_allows(
    name: str, response: list[bytes | None], reused: bool
) -> None:
    async with raw_server(lambda _n, _h: response) as srv:
        pool = pool_for(srv)
        first = await post(pool)
        assert await post(pool) == first
        await pool.close()
    assert 200 <= first < 300, name
    assert srv.connections == (1 if reused else 2), name


async def test_a_kept_connection_the_server_closed_is_retried_on_a_new_one() -> None:
    # The server answers, then drops the connection without saying so (an idle timeout).
    async with raw_server(lambda _n, _h: [OK, None]) as srv:
        pool = pool_for(srv)
        assert await post(pool) == 204
        assert await post(pool) == 204  # whether or not the close was seen by then
        await pool.close()
    assert srv.connections == 2 and len(srv.requests) == 2


async def test_retry_after_and_status_are_read() -> None:
    async with raw_server(
        lambda _n, _h: [b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"]
    ) as srv:
        pool = pool_for(srv)
        resp = await pool.post([], b"{}", 10)
        await pool.close()
    assert (resp.status, resp.header("retry-after"), resp.header("Retry-After")) == (503, "7", "7")


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
    ],
)
async def test_what_is_not_http_is_a_protocol_error(garbage: bytes) -> None:
    async with raw_server(lambda _n, _h: [garbage]) as srv:
        pool = pool_for(srv)
        with pytest.raises(ProtocolError):
            await post(pool)
        await pool.close()


async def test_no_answer_is_a_timeout_and_the_connection_is_not_reused() -> None:
    async with raw_server(lambda n, _h: [] if n == 1 else [OK]) as srv:
        pool = pool_for(srv)
        with pytest.raises(TimeoutError):
            await post(pool, timeout_s=0.2)
        assert await post(pool) == 204
        await pool.close()
    assert srv.connections == 2


async def test_each_request_on_a_kept_connection_gets_its_own_full_timeout() -> None:
    """The connection's timer is set once, at the first request's deadline: a later request
    on it is timed out at its own deadline, never at the earlier one's."""
    async with raw_server(lambda n, _h: [OK] if n == 1 else []) as srv:
        pool = pool_for(srv)
        loop = asyncio.get_running_loop()
        assert await post(pool, timeout_s=0.5) == 204
        await asyncio.sleep(0.3)  # the first request's deadline passes during the second
        started = loop.time()
        with pytest.raises(TimeoutError):
            await post(pool, timeout_s=0.5)
        assert loop.time() - started >= 0.5 - 0.002  # (uvloop's clock counts milliseconds)
        await pool.close()
    assert srv.connections == 1


async def test_a_shorter_timeout_than_the_last_requests_is_kept() -> None:
    async with raw_server(lambda n, _h: [OK] if n == 1 else []) as srv:
        pool = pool_for(srv)
        loop = asyncio.get_running_loop()
        assert await post(pool, timeout_s=60) == 204
        started = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(post(pool, timeout_s=0.3), 45)
        assert loop.time() - started < 30  # not at the first request's deadline
        await pool.close()


async def test_a_big_response_body_is_read_but_its_connection_not_kept() -> None:
    big = b"x" * 200_000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(big), big)
    async with raw_server(lambda _n, _h: [answer]) as srv:
        pool = pool_for(srv, max_body=1024)
        assert [await post(pool), await post(pool)] == [200, 200]
        await pool.close()
    assert srv.connections == 2


async def test_a_header_that_would_break_the_request_is_refused() -> None:
    async with raw_server(lambda _n, _h: [OK]) as srv:
        pool = pool_for(srv)
        with pytest.raises(ValueError, match="line break"):
            await post(pool, "memory_written:p1\r\nX-Injected: 1")
        await pool.close()
    assert srv.requests == []
    with pytest.raises(ValueError, match="cannot be sent"):
        HttpClient("http://127.0.0.1:1/", [("Bad Name", "v")])


async def test_connection_refused_is_an_os_error() -> None:
    async with raw_server(lambda _n, _h: [OK]) as srv:
        port = srv.port
    pool = HttpClient(f"http://127.0.0.1:{port}/", STATIC)
    with pytest.raises(OSError):
        await post(pool)


async def test_basic_auth_from_the_url() -> None:
    async with raw_server(lambda _n, _h: [OK]) as srv:
        pool = HttpClient(f"http://user:p%40ss@127.0.0.1:{srv.port}/", STATIC)
        assert await post(pool) == 204
        await pool.close()
    assert b"\r\nAuthorization: Basic dXNlcjpwQHNz\r\n" in srv.requests[0][0]  # user:p@ss


async def test_https_with_the_sinks_ca(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with https_receiver(server_ctx) as (url, seen):
        trusted = HttpClient(url, STATIC, ssl_context=ssl_context(TlsConfig(ca_file=cert)))
        assert [await post(trusted), await post(trusted)] == [204, 204]
        await trusted.close()
        untrusted = HttpClient(url, STATIC, ssl_context=ssl_context(TlsConfig()))
        with pytest.raises(ssl.SSLCertVerificationError):
            await post(untrusted)
    assert seen == ["memory_written:p1"] * 2
