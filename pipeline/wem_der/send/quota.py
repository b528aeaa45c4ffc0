"""The quota: how many requests may start, and when.

AEMO allows 6000 requests per minute on the DER APIs and answers 429 above it
(docs/aemo-contract.md, "Limits and quota"). The pipeline's invariant: no window of the
period ever holds more than COUNT requests on the wire, counting every attempt, retry and
replay, from the first second of a run; and with work waiting, steady state uses at least
98% of the quota.

A leaky bucket cannot give that: its burst and its drip add up, so
`aiolimiter.AsyncLimiter(6000, 60)` admits about 12,000 requests in the first minute
(docs/pitfalls.md, "Rate limiting"). This module keeps an exact sliding-window log instead,
the start time of every request still inside the window, in a `QuotaLog` that every job
of the participant may share (send/quota_store.py: this process, this host, or Redis):

    acquire() --nobody queued and the log grants--> return (no lock)
              --otherwise--> FIFO lock --> sleep exactly until the log's oldest start
                             leaves the window, the pause ends or a recovering limit
                             rises; ask again

Besides COUNT per period, an optional ceiling (`burst`, such as 100 per second) keeps
every shorter window smooth: a gateway that arrests spikes refuses a second that holds
more than the quota's average rate, even when the minute has room. aiolimiter's bucket
cannot hold that ceiling exactly either (the same burst-plus-drip sum), so the ceiling is
a second window of the same log.

Take the limiter once per HTTP attempt, inside the retry loop, right before the bytes
leave: the server counts attempts, not records.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable

from wem_der.send.quota_store import Ask, MemoryLog, QuotaLog

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)\s*([sm]?)\s*", re.IGNORECASE)
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0}
# A shared pause that ends later than this job's own by more than this is another job's:
# the log's clock and this one differ by the time a grant takes to reach it.
_PAUSE_SLACK_S = 0.01


def parse_rate(text: str) -> tuple[int, float]:
    """Read a quota written `COUNT/PERIOD` ("6000/60s", "6000/1m", "300/3") as (count, seconds)."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"rate {text!r} is not COUNT/PERIOD with an optional unit s or m "
            "(for example '6000/60s' or '6000/1m')"
        )
    count = int(match[1])
    period_s = float(match[2]) * _UNIT_S[match[3].lower()]
    if count < 1 or period_s <= 0:
        raise ValueError(f"rate {text!r} must allow at least 1 request in a period longer than 0")
    return count, period_s


def parse_burst(text: str | None, count: int, period_s: float) -> tuple[int, float] | None:
    """The per-second ceiling a quota runs under: `text` as `COUNT/PERIOD` ("100/1s"),
    "off" for none, or None for the quota's average rate over one second (100 per second
    at 6000/60s, never below 1). A ceiling no stricter than the quota itself is none."""
    if text is not None and text.strip().lower() == "off":
        return None
    burst = parse_rate(text) if text is not None else (max(1, math.ceil(count / period_s)), 1.0)
    # A window no longer than the quota's lies inside one of the quota's windows: allowed
    # COUNT or more, it never binds (the default at 20/1s is 20/1s).
    if burst[1] <= period_s and burst[0] >= count:
        return None
    return burst


# The longest least time between two starts of a job (see `spread_s`): about what a
# gateway near the client takes to refuse a request.
MAX_SPREAD_S = 0.01


def spread_s(count: int, period_s: float) -> float:
    """The least time between two starts of a job: half the quota's average interval, at
    most `MAX_SPREAD_S` (5 ms at 6000/60s).

    A window that frees many places at once (the run's first, the end of a pause, the
    echo of either one window later) would otherwise let as many requests leave together:
    a spike for a gateway that arrests them and, if the register has just gone down, all
    of them into the outage before its first failure comes back for the breaker to act
    on (send/breaker.py). Half the interval leaves room to catch up after a late timer,
    so it costs no throughput; at a slow quota the gap stays short, for the same reason.
    """
    return min(period_s / count / 2, MAX_SPREAD_S)


class QuotaLimiter:
    """Let at most `limit` requests start in any window of `period_s + margin_s` seconds.

    `limit` is `count` until a 429 arrives (`throttled`); it then drops by
    `decrease_factor` (never below `min_fraction * count`) and climbs back linearly to
    `count` over `recovery_s`. `pause_for` stops every start until a moment has passed.
    `burst` (count, seconds) adds a ceiling on any shorter window, lowered with the limit;
    `max_share` caps this job's own starts at that fraction of the limit; `gap_s` is the
    least time between two of this job's starts (see `spread_s`). `log` holds the
    starts, shared with other jobs or not (a `MemoryLog` of this process by default).
    The clock must never go backwards; `sleep` must sleep for (at least) the given time.
    """

    __slots__ = (
        "_burst",
        "_burst_window_s",
        "_clock",
        "_count",
        "_decrease",
        "_floor",
        "_full_at",
        "_gap_s",
        "_granted",
        "_lock",
        "_log",
        "_low",
        "_max_in_window",
        "_max_share",
        "_next_start",
        "_paused_until",
        "_period_s",
        "_queued",
        "_recent",
        "_recovery_s",
        "_share_until",
        "_sleep",
        "_step_s",
        "_throttled_at",
        "_window_s",
    )

    def __init__(
        self,
        *,
        count: int,
        period_s: float,
        margin_s: float = 0.1,
        min_fraction: float = 0.1,
        decrease_factor: float = 0.7,
        recovery_s: float | None = None,
        burst: tuple[int, float] | None = None,
        max_share: float | None = None,
        gap_s: float = 0.0,
        log: QuotaLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        recovery_s = period_s if recovery_s is None else recovery_s
        if count < 1 or not period_s > 0:
            raise ValueError(
                f"quota {count}/{period_s}s must allow at least 1 request per period > 0"
            )
        if not margin_s >= 0:
            raise ValueError(f"margin_s must be >= 0, not {margin_s}")
        if not 0 < min_fraction <= 1 or not 0 < decrease_factor < 1:
            raise ValueError("min_fraction must be in (0, 1] and decrease_factor in (0, 1)")
        if not recovery_s > 0:
            raise ValueError(f"recovery_s must be > 0, not {recovery_s}")
        if burst is not None and (burst[0] < 1 or not burst[1] > 0):
            raise ValueError(f"burst {burst} must allow at least 1 request per period > 0")
        if max_share is not None and not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], not {max_share}")
        if not gap_s >= 0:
            raise ValueError(f"gap_s must be >= 0, not {gap_s}")
        self._count = count
        self._period_s = period_s
        # The client stamps a start when the request leaves; the server counts it when it
        # arrives, one network delay later. If that delay varies by up to d, two starts
        # exactly period_s apart here can arrive less than period_s apart there, and the
        # server's window would hold COUNT+1. Keeping the client's window margin_s longer
        # absorbs up to margin_s of such jitter. It costs margin_s / (period_s + margin_s)
        # of the quota: 0.17% at 6000/60s with the default 0.1 s.
        self._window_s = period_s + margin_s
        self._burst = burst[0] if burst else None
        # The ceiling's window is stretched by the same fraction as the quota's, so that in
        # steady state it allows exactly the quota's rate (100 per 1.0017 s at 6000/60s)
        # and never costs throughput; a margin as long as the quota's (0.1 s in 1 s) would
        # cost a tenth of it.
        self._burst_window_s = burst[1] * self._window_s / period_s if burst else 1.0
        self._max_share = max_share
        self._floor = max(1, math.ceil(min_fraction * count))
        self._decrease = decrease_factor
        self._recovery_s = recovery_s
        self._clock = clock
        self._sleep = sleep
        self._log: QuotaLog = MemoryLog(clock) if log is None else log
        self._recent: deque[float] = deque()  # own starts within the last period_s
        self._max_in_window = 0
        self._granted = 0
        self._paused_until = -math.inf
        self._gap_s = gap_s
        self._next_start = -math.inf
        # A pause not yet told to the log (a 429's): the next grant carries it to every job.
        self._share_until = -math.inf
        self._queued = 0  # acquirers on the slow path; while > 0 nobody may skip the queue
        # asyncio.Lock hands over in FIFO order and wakes one waiter at a time: only the
        # head of the queue sleeps on the clock, so a reopening window wakes no herd.
        self._lock = asyncio.Lock()
        # Throttle state: the limit was `_low` at `_throttled_at` and gains 1 every
        # `_step_s` seconds until `_full_at`, when it is `count` again.
        self._throttled_at = -math.inf
        self._low = count
        self._step_s = 0.0
        self._full_at = -math.inf

    @property
    def limit(self) -> int:
        """The effective number of starts allowed per window now."""
        return self._limit_at(self._clock())

    @property
    def max_in_window(self) -> int:
        """The most starts in any window of `period_s` (exact, sliding), as the server counts."""
        return self._max_in_window

    @property
    def granted(self) -> int:
        """How many starts have been granted in all."""
        return self._granted

    async def acquire(self) -> None:
        """Return when one request may start now, having recorded its start."""
        # Fast path: with nobody queued, a start the log grants at once takes no lock.
        if not self._queued and await self._grant_or_wait() == 0.0:
            return
        self._queued += 1
        try:
            async with self._lock:
                # Each wait is computed exactly; the loop asks again because a pause, a
                # throttle, a rising limit or another job may have changed the answer
                # meanwhile, and because asyncio may fire a timer up to one clock
                # resolution early. A cancelled sleep leaves nothing recorded, and the
                # lock passes on.
                while (wait := await self._grant_or_wait()) > 0.0:
                    await self._sleep(wait)
        finally:
            self._queued -= 1

    def pause_for(self, seconds: float) -> None:
        """Hold every start until `seconds` from now (a Retry-After); never shorten a pause."""
        if not math.isfinite(seconds):
            raise ValueError(f"pause of {seconds} s: clamp a Retry-After before pausing")
        until = self._clock() + seconds
        self._paused_until = max(self._paused_until, until)
        self._share_until = max(self._share_until, until)

    def throttled(self) -> None:
        """A 429 arrived: lower the limit by `decrease_factor`, once per overshoot."""
        now = self._clock()
        # The 429s of one overshoot answer requests that started while the grants of that
        # moment were in the window. Until all of those have left it, further 429s are
        # echoes of the same event, not news; counting each would cut the limit to the
        # floor on one burst of in-flight answers.
        if now < self._throttled_at + self._window_s:
            return
        low = max(self._floor, math.floor(self._limit_at(now) * self._decrease))
        if low >= self._count:  # min_fraction == 1: there is nothing to lower
            return
        self._throttled_at = now
        self._low = low
        self._step_s = self._recovery_s / (self._count - low)
        self._full_at = now + self._recovery_s

    async def _grant_or_wait(self) -> float:
        """Record a start and return 0.0 if one may start now, else how long to wait (> 0)."""
        now = self._clock()
        if now < self._next_start:
            return self._next_start - now
        sharing = self._share_until
        share_s = sharing - now
        # While paused, the log need not be asked, unless the pause is still to be shared.
        if now < self._paused_until and share_s <= 0:
            return self._paused_until - now
        limit = self._limit_at(now)
        taken = await self._log.take(
            Ask(
                limit=limit,
                window_s=self._window_s,
                # Lowered with the limit: after a 429 from a gateway that counts seconds,
                # a ceiling left at its height would earn the next one.
                burst=None if self._burst is None else max(1, self._burst * limit // self._count),
                burst_window_s=self._burst_window_s,
                share=None if self._max_share is None else max(1, int(self._max_share * limit)),
                pause_s=max(0.0, share_s),
            )
        )
        # Told, unless a longer pause came while the log was asked: that one is the next's.
        if share_s > 0 and self._share_until == sharing:
            self._share_until = -math.inf
        if taken.paused_s > 0:
            now = self._clock()
            # Another job's 429 (a pause longer than this job's own): it means the rate is
            # too high for everyone, so this job lowers its own too.
            if now + taken.paused_s > self._paused_until + _PAUSE_SLACK_S:
                self._paused_until = now + taken.paused_s
                self.throttled()
            return max(taken.paused_s, self._paused_until - now)
        if taken.wait_s == 0.0:
            self._record(now)
            self._next_start = now + self._gap_s
            return 0.0
        wait = taken.wait_s
        if limit < self._count:
            wait = min(wait, self._throttled_at + (limit - self._low + 1) * self._step_s - now)
        return wait

    def _record(self, now: float) -> None:
        """Count a start at `now` and update the exact sliding maximum of this job's own
        starts over windows of period_s."""
        self._granted += 1
        # A window's population is largest when it ends on a start, so checking the
        # window (now - period_s, now] at each start gives the exact maximum, in O(1)
        # amortised: each start enters and leaves this deque once.
        recent, period_s = self._recent, self._period_s
        while recent and recent[0] + period_s <= now:
            recent.popleft()
        recent.append(now)
        self._max_in_window = max(self._max_in_window, len(recent))

    def _limit_at(self, now: float) -> int:
        """The effective limit at `now`: `count`, or `_low` plus one per recovery step taken."""
        if now >= self._full_at:
            return self._count
        base, step = self._throttled_at, self._step_s
        steps = max(0, math.floor((now - base) / step))
        # The division can be off by one against the sums `_grant_or_wait` sleeps until;
        # settle on those sums so that waking at a rise always sees the higher limit.
        while base + (steps + 1) * step <= now:
            steps += 1
        while steps > 0 and base + steps * step > now:
            steps -= 1
        return min(self._count, self._low + steps)
