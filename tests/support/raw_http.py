"""A raw HTTP/1.1 receiver on 127.0.0.1 (an asyncio socket server) that answers exactly as a
test scripts it: the bytes of misbehaving receivers that no HTTP server library would send."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

# What to send for a request: bytes are written as they are, a float waits that many
# seconds, None closes the connection there.
Piece = bytes | float | None
Answer = Callable[[int, bytes], list[Piece]]  # (request number from 1, head) -> pieces


class RawServer:
    """Reads whole requests (Content-Length bodies); answers each with ``answer``'s pieces,
    written one at a time. Pieces of one request are written by a task of their own, so a
    piece that waits lets the next request in (as a receiver writing late would)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.written = 0  # bytes of answers written
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                pieces = self.answer(len(self.requests), head)
                if any(isinstance(p, float) for p in pieces):
                    task = asyncio.create_task(self._write(writer, pieces))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif not await self._write(writer, pieces):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, pieces: list[Piece]) -> bool:
        try:
            for piece in pieces:
                if piece is None:
                    writer.close()
                    return False
                if isinstance(piece, float):
                    await asyncio.sleep(piece)
                    continue
                writer.write(piece)
                await writer.drain()
                self.written += len(piece)
        except ConnectionError:
            writer.close()
            return False
        return True


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[RawServer]:
    srv = RawServer(answer)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        server.close()
        for task in list(srv._tasks):
            task.cancel()
        for writer in srv.writers:
            writer.close()
        await server.wait_closed()


@contextmanager
def raw_server_in_thread(answer: Answer) -> Iterator[RawServer]:
    """:func:`raw_server` on an event loop of its own, in a thread: it keeps writing while the
    test's loop is held (to put bytes in a socket the client's loop has not read yet)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="raw-http", daemon=True)
    thread.start()
    cm = raw_server(answer)
    try:
        srv = asyncio.run_coroutine_threadsafe(cm.__aenter__(), loop).result(30)
        try:
            yield srv
        finally:
            asyncio.run_coroutine_threadsafe(cm.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
