"""The quota: how many requests may start, and when.

AEMO allows 6000 requests per minute on the DER APIs and answers 429 above it
(docs/aemo-contract.md, "Limits and quota"). The pipeline's invariant: no window of the
period ever holds more than COUNT requests on the wire, counting every attempt, retry and
replay, from the first second of a run; and with work waiting, steady state uses at least
98% of the quota.

A leaky bucket cannot give that: its burst and its drip add up, so
`aiolimiter.AsyncLimiter(6000, 60)` admits about 12,000 requests in the first minute
(docs/pitfalls.md, "Rate limiting"). This module keeps an exact sliding-window log instead,
the start time of every request still inside the window:

    acquire() --nobody queued and room now--> record the start, return (no lock, no await)
              --otherwise--> FIFO lock --> sleep exactly until the oldest start leaves the
                             window, the pause ends or a recovering limit rises; re-check

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

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)\s*([sm]?)\s*", re.IGNORECASE)
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0}


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


class QuotaLimiter:
    """Let at most `limit` requests start in any window of `period_s + margin_s` seconds.

    `limit` is `count` until a 429 arrives (`throttled`); it then drops by
    `decrease_factor` (never below `min_fraction * count`) and climbs back linearly to
    `count` over `recovery_s`. `pause_for` stops every start until a moment has passed.
    The clock must never go backwards; `sleep` must sleep for (at least) the given time.
    """

    __slots__ = (
        "_clock",
        "_count",
        "_decrease",
        "_floor",
        "_full_at",
        "_granted",
        "_lock",
        "_low",
        "_max_in_window",
        "_paused_until",
        "_period_s",
        "_queued",
        "_recent",
        "_recovery_s",
        "_sleep",
        "_starts",
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
        self._count = count
        self._period_s = period_s
        # The client stamps a start when the request leaves; the server counts it when it
        # arrives, one network delay later. If that delay varies by up to d, two starts
        # exactly period_s apart here can arrive less than period_s apart there, and the
        # server's window would hold COUNT+1. Keeping the client's window margin_s longer
        # absorbs up to margin_s of such jitter. It costs margin_s / (period_s + margin_s)
        # of the quota: 0.17% at 6000/60s with the default 0.1 s.
        self._window_s = period_s + margin_s
        self._floor = max(1, math.ceil(min_fraction * count))
        self._decrease = decrease_factor
        self._recovery_s = recovery_s
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()  # starts within the last window_s, oldest first
        self._recent: deque[float] = deque()  # starts within the last period_s (max_in_window)
        self._max_in_window = 0
        self._granted = 0
        self._paused_until = -math.inf
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
        # Fast path: with nobody queued, a free slot is taken without a lock or an await.
        if not self._queued and self._grant_or_wait(self._clock()) == 0.0:
            return
        self._queued += 1
        try:
            async with self._lock:
                # Each wait is computed exactly; the loop re-checks because a pause, a
                # throttle or a rising limit may have changed the answer meanwhile, and
                # because asyncio may fire a timer up to one clock resolution early. A
                # cancelled sleep leaves nothing recorded, and the lock passes on.
                while (wait := self._grant_or_wait(self._clock())) > 0.0:
                    await self._sleep(wait)
        finally:
            self._queued -= 1

    def pause_for(self, seconds: float) -> None:
        """Hold every start until `seconds` from now (a Retry-After); never shorten a pause."""
        if not math.isfinite(seconds):
            raise ValueError(f"pause of {seconds} s: clamp a Retry-After before pausing")
        self._paused_until = max(self._paused_until, self._clock() + seconds)

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

    def _grant_or_wait(self, now: float) -> float:
        """Record a start and return 0.0 if one may start at `now`, else how long to wait (> 0)."""
        if now < self._paused_until:
            return self._paused_until - now
        starts, window_s = self._starts, self._window_s
        # A start at t is in the window (now - window_s, now] while t + window_s > now. The
        # wait below uses the same sum, so the wake-up time and this test agree exactly
        # and a waiter never wakes to find the slot still taken by rounding.
        while starts and starts[0] + window_s <= now:
            starts.popleft()
        limit = self._limit_at(now)
        excess = len(starts) - limit
        if excess < 0:
            self._record(now)
            return 0.0
        # Full: a slot opens when the (excess+1)th oldest start leaves the window (the
        # oldest, unless a throttle lowered the limit), or sooner if the limit rises.
        wait = starts[excess] + window_s - now
        if limit < self._count:
            wait = min(wait, self._throttled_at + (limit - self._low + 1) * self._step_s - now)
        return wait

    def _record(self, now: float) -> None:
        """Log a start at `now` and update the exact sliding maximum over windows of period_s."""
        self._starts.append(now)
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
