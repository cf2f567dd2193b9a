"""How a sink's events go out, and what becomes of those that fail.

A worker's batch is one request (:mod:`eventsinkd.delivery.requests`); each event
has its own outcome. The retry policy (:mod:`eventsinkd.delivery.policy`) decides
what becomes of each failure and this module does it: a retry waits out its backoff
*parked* on a timer, not occupying a worker (in WAL order, ``concurrency: 1`` or
``order: wal``, the one worker waits instead, since order matters more); an event
given up on becomes a dead letter (one that cannot be stored is not finished, and is
tried again later); an outage pauses the sink, and a probe (:mod:`eventsinkd.delivery.pause`)
tries one event at a time until the receiver answers. At shutdown a failed event
gets no retry: it goes to the sink's successor (a reload) or is left unfinished, read
again after a restart.

It changes what the sink holds only through the sink's ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from eventsinkd.common.logs import RateLimitedLog
from eventsinkd.common.secrets import scrub
from eventsinkd.delivery.job import Job
from eventsinkd.delivery.pause import Pause
from eventsinkd.delivery.policy import Action, RetryPolicy
from eventsinkd.delivery.requests import Requests
from eventsinkd.delivery.sink.ledger import Ledger
from eventsinkd.state.deadletters import DeadLetter
from eventsinkd.state.letterwriter import DeadLetterWriter
from eventsinkd.transports.contract import Attempt, Outcome

if TYPE_CHECKING:
    from eventsinkd.events import Event
    from eventsinkd.metrics.tallies import Tally

log = logging.getLogger("eventsinkd.delivery.sink")

Finish = Callable[[Job, Literal["delivered", "failed"]], None]


class Delivery:
    def __init__(
        self,
        name: str,
        ledger: Ledger,
        policy: RetryPolicy,
        requests: Requests,
        *,
        ordered: bool,
        content: Literal["summary", "full"],
        retries_metric: Tally,
        dead_letters: DeadLetterWriter | None,
        finish: Finish,
        hand_over: Callable[[Job], None],
        successor: Callable[[], object | None],
        draining: asyncio.Event,
    ) -> None:
        self.name = name
        self._ledger = ledger
        self._policy = policy
        self._requests = requests
        self._ordered = ordered
        self._content = content  # the body a dead letter keeps
        self._retries_metric = retries_metric
        self._dead_letters = dead_letters
        self._finish = finish
        self._hand_over = hand_over
        self._successor = successor
        self._draining = draining
        self.shaping = False  # the sink has a transform: jobs may carry a problem
        self.rlog = RateLimitedLog(log)
        self.pause = Pause(
            name,
            delay=policy.delay,
            oldest=ledger.oldest_waiting,
            send=self._probe,
            answered=self._answered,
            closing=draining,
        )

    async def deliver(self, jobs: list[Job]) -> None:
        """A worker's batch: sent, and each failure seen to; never raises."""
        if self.shaping:
            jobs = await self._refuse(jobs)
        while jobs:
            try:
                await self._send(jobs)
                return
            except Exception:
                # A bug of eventsinkd's, not trouble with the receiver: the worker must
                # carry on, and the events it held be tried again, not held for ever
                # (block mode's cursor would never pass them).
                delay = self._policy.longest_s
                self.rlog.log(
                    logging.ERROR,
                    "bug",
                    "sink %s: delivering %d event(s) failed unexpectedly; trying again in %ss",
                    self.name,
                    len(jobs),
                    delay,
                    exc_info=True,
                )
                jobs = self._ledger.sendable(jobs)
            if self._draining.is_set():
                return  # held, so left unfinished at shutdown (block mode reads them again)
            if not self._ordered:
                for job in jobs:
                    self._ledger.park(job, delay)
                return
            # WAL order: the one worker tries them again itself, as it does a retry.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), delay)

    async def _refuse(self, jobs: list[Job]) -> list[Job]:
        """Jobs the sink's transform failed on are never sendable: each is a dead letter with
        jq's message (no retry: the program fails the same way each time). The rest."""
        sendable = []
        for job in jobs:
            problem = job.problem
            if problem is None:
                sendable.append(job)
                continue
            self._ledger.stats.last_failure = time.time()
            self._ledger.stats.last_error = scrub(problem)
            job.attempted()
            await self._give_up(job, Attempt(Outcome.PERMANENT, None, problem))
        return sendable

    async def _send(self, jobs: list[Job]) -> None:
        while jobs:
            if self.pause.active:
                self._ledger.wait_out_pause(jobs)  # the probe takes them from there
                return
            results = await self._request([job.event for job in jobs])
            failed = []
            for job, result in zip(jobs, results, strict=True):
                if result.outcome is Outcome.DELIVERED:
                    self._finish(job, "delivered")
                else:
                    failed.append((job, result))
            if not failed:
                return
            if self.pause.active:
                # In flight when the sink paused: these attempts do not count.
                self._ledger.wait_out_pause(job for job, _ in failed)
                return
            jobs = await self._failed(failed)

    async def _request(self, events: Sequence[Event], *, worker: bool = True) -> Sequence[Attempt]:
        results = await self._requests.send(events, worker=worker)
        delivered = sum(1 for r in results if r.outcome is Outcome.DELIVERED)
        if delivered:
            self._policy.succeeded()  # the receiver works (it took all or part of the batch)
        if delivered < len(results):
            event, result = next(
                (e, r)
                for e, r in zip(events, results, strict=True)
                if r.outcome is not Outcome.DELIVERED
            )
            self._ledger.stats.last_failure = time.time()
            self._ledger.stats.last_error = scrub(
                result.detail
            )  # a library's message may quote a URL
            self.rlog.log(
                logging.WARNING,
                f"attempt:{result.outcome.value}",
                "sink %s: attempt for %s: %s",
                self.name,
                event.id,
                result.detail,
            )
        return results

    async def _failed(self, failed: list[tuple[Job, Attempt]]) -> list[Job]:
        """Act on the policy's decision for each failed job; returns those the (ordered) worker
        retries itself."""
        for job, _ in failed:
            job.attempted()
        if self._draining.is_set():
            # At shutdown a retryable failure gets no retry: it follows the successor or is
            # left unfinished; a permanent one is still a dead letter.
            for job, result in failed:
                if not result.outcome.retryable:
                    await self._give_up(job, result)
                elif self._successor() is not None:
                    self._hand_over(job)
                else:
                    self._ledger.leave_unfinished(job)
            return []
        decisions = self._policy.decide(failed)
        paused = [
            (job, r)
            for (job, r), d in zip(failed, decisions, strict=True)
            if d.action is Action.PAUSE
        ]
        if paused:
            self._ledger.wait_out_pause(job for job, _ in paused)
            self.pause.begin(self._policy.failures_in_a_row, paused[-1][1])
        retry: list[Job] = []
        wait = 0.0
        for (job, result), decision in zip(failed, decisions, strict=True):
            if decision.action is Action.RETRY:
                self._retries_metric.inc()
                if self._ordered:
                    retry.append(job)
                    wait = max(wait, decision.delay_s)
                else:
                    self._ledger.park(job, decision.delay_s)
            elif decision.action is Action.GIVE_UP:
                await self._give_up(job, result)
        if retry:
            # WAL order: order over throughput, so the one worker waits (until shutdown).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), wait)
        return retry

    async def _give_up(self, job: Job, result: Attempt) -> None:
        """A permanent failure, or retries used up while the receiver works: a dead letter."""
        event = job.event
        if self._dead_letters is not None:
            letter = DeadLetter(
                sink=self.name,
                webhook_id=event.id,
                event_type=event.type,
                timestamp=event.timestamp,
                body=event.original_body(self._content),  # replayed through the transform
                attempts=job.attempts,
                first_attempt=job.first_attempt,
                last_attempt=time.time(),
                last_outcome=scrub(result.detail),  # kept on disk, shown by the CLI
            )
            try:
                await self._dead_letters.add(letter)
            except Exception as exc:  # the state directory is full, unwritable or damaged
                # Not finished: block mode must not pass an event that is neither
                # delivered nor kept. Try the whole thing again later. The store's failure
                # is a problem of the daemon (logged there, once, then counted).
                log.debug("sink %s: cannot store dead letter %s: %s", self.name, event.id, exc)
                self._ledger.park(job, self._policy.longest_s)
                return
        self._finish(job, "failed")
        self.rlog.log(
            logging.WARNING,
            "failed",
            "sink %s: event %s failed after %d attempt(s) (%s); kept as a dead letter",
            self.name,
            event.id,
            job.attempts,
            result.detail,
        )

    async def _probe(self, job: Job) -> Attempt:
        """One probe while paused; a retryable failure puts ``job`` back in line (first in WAL
        order; otherwise last, so that one event that keeps failing holds up no other)."""
        result = await self.send_one(job.event)
        if result.outcome.retryable:
            self._ledger.wait_again(job, first=self._ordered)
        return result

    async def _answered(self, job: Job, result: Attempt) -> None:
        """A probe got an answer: the sink resumes, and the probed event is finished."""
        self._policy.resumed()
        self._ledger.resume()
        if result.outcome is Outcome.DELIVERED:
            self._finish(job, "delivered")
        else:  # the receiver answered: it is up, and refuses this one event
            job.attempted()
            await self._give_up(job, result)

    async def send_one(self, event: Event) -> Attempt:
        """One attempt for one event, beside the workers (a probe, a dead letter's replay)."""
        return (await self._request([event], worker=False))[0]
