"""One sink: a bounded queue of events, its own HTTP session and its own workers.

Nothing a sink does can hold up another sink: each has its own queue, session
and workers, and a retry waiting for its backoff is parked on a timer instead
of occupying a worker (except with ``concurrency: 1``, where order matters more
and the one worker waits). The number of events a sink holds - queued, in
flight or parked - never exceeds ``max_inflight``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from eventsinkd import __version__
from eventsinkd.config import EventsConfig, FilterConfig, SinkConfig, TlsConfig
from eventsinkd.delivery.filters import EventFilter
from eventsinkd.delivery.outcome import Outcome, backoff_delay, classify, parse_retry_after
from eventsinkd.delivery.signing import sign
from eventsinkd.events import Event
from eventsinkd.metrics import Metrics
from eventsinkd.ratelimit import RateLimitedLog
from eventsinkd.wal.entry import Entry

log = logging.getLogger(__name__)

USER_AGENT = f"eventsinkd/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024  # read (and discard) at most this much of a response body


@dataclass(slots=True)
class SinkStats:
    offered: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    last_success: float | None = None
    last_failure: float | None = None


class _Job:
    __slots__ = ("attempts", "event")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.attempts = 0


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


class Sink:
    def __init__(
        self,
        cfg: SinkConfig,
        events: EventsConfig,
        metrics: Metrics,
        on_finish: Callable[[Event], None] | None = None,
        *,
        rng: random.Random | None = None,
        stats: SinkStats | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.max_inflight = events.max_inflight
        self.backoff = events.backoff_for(cfg)
        self.retry_after_max = events.retry_after_max_seconds
        # A sink reconfigured by a reload shares its predecessor's figures, as the
        # Prometheus counters of the same name do.
        self.stats = stats if stats is not None else SinkStats()
        self.inflight = 0  # accepted and not finished: queued, in flight or parked for a retry
        self._filter = EventFilter(cfg.filter) if cfg.filter != FilterConfig() else None
        self._on_finish = on_finish
        self._rng = rng or random.Random()
        self._ordered = cfg.concurrency == 1
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._parked: dict[_Job, asyncio.TimerHandle] = {}
        self._held: set[_Job] = set()  # queued, in flight or parked
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = asyncio.Event()
        self._abort = asyncio.Event()
        self._stop_task: asyncio.Task[int] | None = None
        self._successor: Sink | None = None
        self._rlog = RateLimitedLog(log)
        self._static_headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **cfg.headers,
        }
        m = metrics
        self._m_delivered = m.delivered.labels(self.name)
        self._m_failed = m.failed.labels(self.name)
        self._m_dropped = m.dropped.labels(self.name)
        self._m_offered = m.offered.labels(self.name)
        self._m_retries = m.retries.labels(self.name)
        self._m_latency = m.delivery_latency.labels(self.name)
        self._m_duration = m.request_duration.labels(self.name)
        # Read at scrape time rather than updated per event (the per-event cost shows in
        # profiles). A reloaded sink of the same name takes the callbacks over.
        m.queue_depth.labels(self.name).set_function(lambda: self.inflight)
        m.last_success.labels(self.name).set_function(lambda: self.stats.last_success or 0.0)
        m.last_failure.labels(self.name).set_function(lambda: self.stats.last_failure or 0.0)
        self._m_attempts = {o: m.attempts.labels(self.name, o.value) for o in Outcome}

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.cfg.concurrency, ssl=ssl_context(self.cfg.tls) if self._https else False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_seconds),
            skip_auto_headers=("User-Agent",),
        )
        self._workers = [
            asyncio.create_task(self._worker(), name=f"sink-{self.name}-{i}")
            for i in range(self.cfg.concurrency)
        ]

    @property
    def _https(self) -> bool:
        return self.cfg.url.scheme == "https"

    async def stop(
        self, timeout_s: float, *, release: bool = False, successor: Sink | None = None
    ) -> int:
        """Stop taking events; try each one still held once, for up to ``timeout_s``.

        What is left after that is counted as dropped and logged. Returns how
        many were left. Safe to call more than once. ``release`` (a sink removed
        by a reload) also reports the events left as finished, so block mode's
        position does not wait for a sink that no longer exists; at shutdown they
        stay unfinished and are read again after the restart. With a
        ``successor`` (the same sink, reconfigured by a reload) nothing is left:
        queued events move to it at once, and in-flight ones that do not get
        through follow them.
        """
        if self._stop_task is None:
            self._successor = successor
            self._stop_task = asyncio.create_task(self._stop(timeout_s, release))
        return await asyncio.shield(self._stop_task)

    async def _stop(self, timeout_s: float, release: bool) -> int:
        self._draining.set()
        for job, handle in list(self._parked.items()):
            handle.cancel()
            self._parked.pop(job, None)
            self._queue.put_nowait(job)
        if self._successor is not None:
            while not self._queue.empty():
                self._move(self._queue.get_nowait())
        idle = asyncio.create_task(self._idle.wait())
        abort = asyncio.create_task(self._abort.wait())
        await asyncio.wait({idle, abort}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        abort.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._successor is not None:
            for job in list(self._held):  # cut off in flight: the successor tries again
                self._move(job)
        left = self.inflight
        if left:
            self.stats.dropped += left
            self._m_dropped.inc(left)
            log.warning(
                "sink %s: %d event(s) left undelivered at shutdown, counted as dropped",
                self.name,
                left,
            )
        self.inflight = 0
        left_jobs, self._held = self._held, set()
        if release and self._on_finish is not None:
            for job in left_jobs:
                self._on_finish(job.event)
        if self._session is not None:
            await self._session.close()
        return left

    def _move(self, job: _Job) -> None:
        """Hand ``job`` to the successor; it stays unfinished (block mode keeps waiting for it)."""
        assert self._successor is not None
        self._held.discard(job)
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()
        self._successor._adopt(job)

    def _adopt(self, job: _Job) -> None:
        self.inflight += 1
        self._idle.clear()
        self._held.add(job)
        self._queue.put_nowait(job)

    def abort(self) -> None:
        """End a running :meth:`stop` now, as if its timeout had passed."""
        self._abort.set()

    async def wait_idle(self) -> None:
        """Wait until every event this sink holds is finished."""
        await self._idle.wait()

    # -- taking events -------------------------------------------------------------

    def accepts(self, kind: str, entry: Entry) -> bool:
        return self._filter is None or self._filter.matches(kind, entry)

    @property
    def has_room(self) -> bool:
        return self.inflight < self.max_inflight and not self._draining.is_set()

    def offer(self, event: Event) -> bool:
        """Drop mode: queue ``event`` if there is room, else drop and count it. Never waits."""
        if not self.has_room:
            self.drop()
            return False
        self.stats.offered += 1
        self._m_offered.inc()
        self._enqueue(event)
        return True

    def drop(self) -> None:
        """Count an event this sink had no room for (the warning is rate-limited)."""
        self.stats.offered += 1
        self._m_offered.inc()
        self.stats.dropped += 1
        self._m_dropped.inc()
        self._rlog.log(
            logging.WARNING,
            "drop",
            "sink %s: queue full (%d events), dropping events",
            self.name,
            self.max_inflight,
        )

    async def put(self, event: Event) -> None:
        """Block mode: wait for room, then queue ``event``."""
        while self.inflight >= self.max_inflight:
            self._room.clear()
            await self._room.wait()
        # Counted once it is held, so offered = delivered + failed + dropped + queue depth.
        self.stats.offered += 1
        self._m_offered.inc()
        self._enqueue(event)

    def _enqueue(self, event: Event) -> None:
        self._adopt(_Job(event))

    def _finish(self, job: _Job, outcome: str) -> None:
        self._held.discard(job)
        now = time.time()
        if outcome == "delivered":
            self.stats.delivered += 1
            self._m_delivered.inc()
            self.stats.last_success = now
            wal_time = job.event.wal_time
            if wal_time is not None:
                self._m_latency.observe(max(0.0, now - wal_time))
        elif outcome == "failed":
            self.stats.failed += 1
            self._m_failed.inc()
        else:
            self.stats.dropped += 1
            self._m_dropped.inc()
        self.inflight -= 1
        if self.inflight < self.max_inflight:
            self._room.set()
        if self.inflight == 0:
            self._idle.set()
        if self._on_finish is not None:
            self._on_finish(job.event)

    # -- delivering ----------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            await self._deliver(job)

    async def _deliver(self, job: _Job) -> None:
        while True:
            outcome, retry_after = await self._attempt(job.event)
            job.attempts += 1
            if outcome is Outcome.DELIVERED:
                self._finish(job, "delivered")
                return
            if not outcome.retryable or job.attempts > self.cfg.max_retries:
                self._finish(job, "failed")
                self._rlog.log(
                    logging.WARNING,
                    "failed",
                    "sink %s: event %s failed after %d attempt(s) (%s)",
                    self.name,
                    job.event.id,
                    job.attempts,
                    outcome.value,
                )
                return
            if self._draining.is_set():
                if self._successor is not None:
                    self._move(job)
                else:
                    self._finish(job, "dropped")  # its one try at shutdown did not get through
                return
            delay = backoff_delay(
                job.attempts, self.backoff, retry_after, self.retry_after_max, self._rng
            )
            self._m_retries.inc()
            if not self._ordered:
                self._park(job, delay)
                return
            # concurrency 1: order over throughput, so the one worker waits (until shutdown).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), delay)

    def _park(self, job: _Job, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._parked[job] = loop.call_later(delay, self._unpark, job)

    def _unpark(self, job: _Job) -> None:
        if self._parked.pop(job, None) is not None:
            self._queue.put_nowait(job)

    async def _attempt(self, event: Event) -> tuple[Outcome, float | None]:
        assert self._session is not None, "sink not started"
        ts = int(time.time())
        body = event.body(self.cfg.content)
        headers = {**self._static_headers, "webhook-id": event.id, "webhook-timestamp": str(ts)}
        keys = self.cfg.signing_keys
        if keys:
            headers["webhook-signature"] = sign(keys, event.id, ts, body)
        retry_after: float | None = None
        started = time.perf_counter()
        try:
            async with self._session.post(str(self.cfg.url), data=body, headers=headers) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)
                outcome = classify(resp.status)
                detail = f"HTTP {resp.status}"
                if outcome is Outcome.RETRY_STATUS:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            outcome, detail = Outcome.TIMEOUT, f"no answer within {self.cfg.timeout_seconds}s"
        except (aiohttp.ClientError, OSError) as exc:
            outcome, detail = Outcome.CONNECTION, str(exc) or type(exc).__name__
        self._m_duration.observe(time.perf_counter() - started)
        self._m_attempts[outcome].inc()
        if outcome is not Outcome.DELIVERED:
            now = time.time()
            self.stats.last_failure = now
            self._rlog.log(
                logging.WARNING,
                f"attempt:{outcome.value}",
                "sink %s: attempt for %s: %s",
                self.name,
                event.id,
                detail,
            )
        return outcome, retry_after
