"""Adaptive concurrency: how many requests (batches) a sink keeps in flight, from the answers.

The model is Vector's adaptive request concurrency: AIMD (additive increase,
multiplicative decrease) on the round-trip time, judged against an exponentially
weighted moving average of past round trips and their deviation. The controller is
pure: it is told when a request starts and how it ended (with the time), and says
what the limit is; the sink keeps that many workers.

Decisions are made once per *interval*, one baseline round trip long but at least
``MIN_INTERVAL_S``. Over an interval the controller collects the mean round trip of the
requests that were delivered, whether any request met back pressure (a retryable
outcome: 408, 425, 429, 5xx, a timeout or a connection error), and whether the requests
in flight reached the limit (demand beyond it). At the end of the interval:

- **back pressure, or a round trip above the baseline** by more than
  ``RTT_DEVIATIONS`` standard deviations (and by more than ``RTT_TOLERANCE`` of it, so
  a receiver that answers with clockwork regularity is not judged on microseconds of
  our own scheduling): the limit is multiplied by ``DECREASE_RATIO``, rounded down,
  and at least 1;
- otherwise, **when the limit was reached and the round trip is near the floor**
  (at most ``RTT_TOLERANCE`` above the shortest interval round trip since the last
  rise), the limit grows: by one, or, below the slow-start threshold, it doubles.
  The threshold starts at the cap, so a new sink doubles from ``INITIAL_LIMIT`` until
  the receiver first pushes back (as TCP's slow start: a few round trips to reach a
  high limit, not one request per round trip: 200 ms apart, that would take minutes).
  The first decrease of a run sets the threshold to the decreased limit; later ones in
  the same run (a receiver going down) lower only the limit, so once the receiver is
  back the sink doubles back to where the trouble began and grows by one from there;
- the baseline then takes the interval's round trip, and the floor it if it is shorter.

A round trip that stays near its floor as requests are added means the receiver has
room; one that rises means requests queue somewhere. Growth is judged against the floor,
not the moving baseline: a baseline follows the round trip, so a round trip that creeps
up by less than the tolerance per step (a sender that is itself the bottleneck: each
request added lengthens every round trip by 1/limit) would always look near it, and the
limit would walk to the cap. A rise forgets the floor, so the next interval's round trip
is the new one (back pressure alone says nothing about the round trip, and keeps it). A
receiver that is simply slower (200 ms instead of 10) gets a short backoff, then its new
latency becomes the floor and the limit grows again: that is right, since more in flight
is then the only way to the same rate.

The minimum interval is ours too. A receiver on the same machine answers in a fraction
of a millisecond, so an interval of one round trip holds a handful of answers, and their
mean swings with whatever else the process did meanwhile (the reader thread holding the
interpreter for a few milliseconds, a burst of events to render). Over 50 ms the mean is
of hundreds of answers. Measured with a 0 ms receiver, where the daemon itself is the
bottleneck, over 10 s runs: the limit held at 8-19 with the minimum and wandered over
16-32 without it, at the same rate (over a minute it still wanders up to 30-40, since a
spurious rise makes the next round trip the floor: BENCHMARKS.md). Before growth was
judged against the floor it walked to the cap, 64 then, which cost a fifth more CPU per
event than 16. A slower receiver is judged once per round trip, as before.

Vector's defaults are kept (``DECREASE_RATIO``, ``EWMA_ALPHA``, ``RTT_DEVIATIONS``);
they come from its simulations of services answering in many ways. What differs: the
slow start and its threshold; growth judged against the floor, within ``RTT_TOLERANCE``;
the minimum interval; a rise is judged only once the baseline has two round trips (one
gives no deviation); and back pressure on a request sent before the last decrease does
not count again (one cut per window, as TCP's: a receiver refusing everything in flight
at once costs one decrease, not one per interval its refusals take to arrive).
"""

from __future__ import annotations

import math

DECREASE_RATIO = 0.9
EWMA_ALPHA = 0.4  # the weight of an interval's round trip in the baseline
RTT_DEVIATIONS = 2.5  # how many standard deviations above the baseline count as rising
RTT_TOLERANCE = 0.05  # within this fraction of the floor, a round trip is "near" it
INITIAL_LIMIT = 4  # the former default of ``concurrency``
MIN_INTERVAL_S = 0.05  # the shortest interval between decisions (see above)


class Ewma:
    """Exponentially weighted moving mean and variance (West's incremental form)."""

    __slots__ = ("alpha", "mean", "samples", "variance")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean = 0.0
        self.variance = 0.0
        self.samples = 0

    def add(self, x: float) -> None:
        self.samples += 1
        if self.samples == 1:
            self.mean = x
            return
        diff = x - self.mean
        step = self.alpha * diff
        self.mean += step
        self.variance = (1 - self.alpha) * (self.variance + diff * step)

    @property
    def deviation(self) -> float:
        return math.sqrt(self.variance)


class AdaptiveConcurrency:
    """The limit on a sink's requests in flight, from 1 to ``max_limit``.

    The sink calls :meth:`started` when a request goes out and :meth:`finished` when its
    answer is in; ``limit`` is how many requests may be in flight. Times are seconds on
    any monotonic clock (given, so tests can feed it any sequence).
    """

    def __init__(
        self,
        max_limit: int,
        initial: int = INITIAL_LIMIT,
        *,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.max_limit = max_limit
        self.min_interval_s = min_interval_s
        self.limit = max(1, min(initial, max_limit))
        self.in_flight = 0
        self.baseline = Ewma(EWMA_ALPHA)
        self.threshold = max_limit  # slow start below it: the limit doubles
        self.increases = 0
        self.decreases = 0
        self._decreasing = False  # the last decision was a decrease
        self._next_decision = -math.inf
        self._rtt_sum = 0.0
        self._rtt_n = 0
        self._back_pressure = False
        self._reached = False
        self._floor: float | None = None  # the shortest interval round trip since a rise

    def started(self) -> int:
        """A request went out; what to give :meth:`finished` with its answer."""
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._reached = True
        return self.decreases

    def abandoned(self) -> None:
        """A request was cut off without an answer (the sink is stopping): it says nothing."""
        self.in_flight -= 1

    def finished(self, now: float, rtt: float | None, back_pressure: bool, sent: int = -1) -> bool:
        """A request's answer is in at ``now``: ``rtt`` its round trip when it delivered
        something (None otherwise), ``back_pressure`` when any of it met a retryable outcome,
        ``sent`` what :meth:`started` returned for it (back pressure on a request sent
        before the last decrease is not counted again).

        Returns True when the limit changed.
        """
        self.in_flight -= 1
        if back_pressure and sent >= self.decreases:
            self._back_pressure = True
        if rtt is not None:
            self._rtt_sum += rtt
            self._rtt_n += 1
        if now < self._next_decision:
            return False
        return self._decide(now)

    def _decide(self, now: float) -> bool:
        before = self.limit
        rtt = self._rtt_sum / self._rtt_n if self._rtt_n else None
        base = self.baseline
        floor = self._floor
        rising = rtt is not None and self._rising(rtt)
        if self._back_pressure or rising:
            self._decrease()
            if rising:
                floor = None  # the receiver is slower now: the next round trip is the floor
        elif rtt is not None:
            self._decreasing = False
            near = floor is not None and rtt <= floor * (1 + RTT_TOLERANCE)
            if self._reached and near:
                self._increase()
        else:
            self._decreasing = False
        if rtt is not None:
            base.add(rtt)
            floor = rtt if floor is None else min(floor, rtt)
        self._floor = floor
        self._next_decision = now + max(base.mean, self.min_interval_s)
        self._rtt_sum, self._rtt_n = 0.0, 0
        self._back_pressure = False
        self._reached = self.in_flight >= self.limit
        return self.limit != before

    def _rising(self, rtt: float) -> bool:
        base = self.baseline
        if base.samples < 2:  # no deviation to judge by yet
            return False
        margin = max(RTT_DEVIATIONS * base.deviation, RTT_TOLERANCE * base.mean)
        return rtt > base.mean + margin

    def _decrease(self) -> None:
        self.decreases += 1
        if self.limit > 1:
            self.limit = max(1, int(self.limit * DECREASE_RATIO))
        if not self._decreasing:
            self.threshold = self.limit
        self._decreasing = True

    def _increase(self) -> None:
        if self.limit >= self.max_limit:
            return
        if self.limit < self.threshold:
            grown = min(self.limit * 2, self.threshold)
        else:
            grown = self.limit + 1
        self.limit = min(grown, self.max_limit)
        self.increases += 1
