"""A sink's workers: as many tasks as its concurrency limit, each taking a batch and sending it.

The pool follows the limit (:mod:`eventsinkd.delivery.concurrency`): more workers
start at once when it grows; when it shrinks, the surplus finish the request they
have out and stop, so a smaller limit holds from each worker's next request.

Batches fill one at a time: a worker takes the first queued event and whatever is
queued behind it, up to the batch size, lingering once for more; meanwhile the
other idle workers wait their turn. With many workers and a trickle of events, each
batch still collects what the linger brings instead of every worker taking one
event each.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from eventsinkd.delivery.job import Job


class Workers:
    def __init__(
        self,
        name: str,
        queue: asyncio.Queue[Job],
        deliver: Callable[[list[Job]], Awaitable[None]],
        *,
        batch_size: int,
        linger_s: float,
        closed: Callable[[], bool],
    ) -> None:
        self.name = name
        self.batch_size = batch_size
        self._queue = queue
        self._deliver = deliver
        self._linger_s = linger_s
        self._closed = closed
        self._filling = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wanted = 0
        self._stopped = False
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._tasks)

    def resize(self, n: int) -> None:
        """Have ``n`` workers: start the missing ones now; surplus ones stop after their request."""
        if self._stopped:
            return
        self._wanted = n
        while len(self._tasks) < n:
            task = asyncio.create_task(self._run(), name=f"sink-{self.name}-{next(self._ids)}")
            self._tasks.add(task)

    async def stop(self) -> None:
        """Cancel every worker (what they held stays with the sink) and wait for them."""
        self._stopped = True
        self._wanted = 0
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            while len(self._tasks) <= self._wanted:
                await self._deliver(await self._take())
        finally:
            self._tasks.discard(task)

    async def _take(self) -> list[Job]:
        queue = self._queue
        if self.batch_size == 1:
            return [await queue.get()]
        async with self._filling:
            jobs = [await queue.get()]
            self._take_queued(jobs)
            if len(jobs) < self.batch_size and self._linger_s > 0 and not self._closed():
                await asyncio.sleep(self._linger_s)
                self._take_queued(jobs)
        return jobs

    def _take_queued(self, jobs: list[Job]) -> None:
        queue = self._queue
        while len(jobs) < self.batch_size and not queue.empty():
            jobs.append(queue.get_nowait())
