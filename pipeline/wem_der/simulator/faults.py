"""Fault injection: what a `FaultProfile` does to one DER request.

One `random.Random(seed)` drives every decision, and each request draws the same number of
values whatever the outcome (one for jitter when jitter is on, one for the action when any
rate is set), so the same seed and the same sequence of requests give the same answers.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from email.utils import formatdate
from enum import Enum

from wem_der.simulator.settings import FaultProfile


class Action(Enum):
    """What happens to a request after the optional delay."""

    NONE = "none"
    THROTTLE = "throttle"  # 429 regardless of the quota
    ERROR_500 = "500"
    ERROR_503 = "503"
    OUTAGE = "outage"  # 503 inside an outage window
    DROP = "drop"  # connection closed, nothing done, no answer
    APPLY_THEN_DROP = "applied-then-dropped"  # change stored, then no answer


@dataclass(frozen=True, slots=True)
class Decision:
    """The delay before handling, and what to do then."""

    delay_s: float
    action: Action


_NO_FAULT = Decision(0.0, Action.NONE)


class FaultInjector:
    """Turn a profile and a seed into per-request decisions."""

    def __init__(self, profile: FaultProfile, *, seed: int, started_at: float) -> None:
        self.profile = profile
        self._rng = random.Random(seed)  # noqa: S311 -- reproducible faults, not security
        # Upper bounds of the exclusive bands of one uniform draw, in a fixed order.
        bands: list[tuple[float, Action]] = []
        edge = 0.0
        for rate, action in (
            (profile.throttle_rate, Action.THROTTLE),
            (profile.error_rate_500, Action.ERROR_500),
            (profile.error_rate_503, Action.ERROR_503),
            (profile.drop_rate, Action.DROP),
            (profile.applied_then_dropped_rate, Action.APPLY_THEN_DROP),
        ):
            if rate > 0:
                edge += rate
                bands.append((edge, action))
        self._bands = tuple(bands)
        self._outages = tuple(
            (started_at + start, started_at + end) for start, end in profile.outages
        )
        self._base_delay_s = profile.latency_ms / 1000
        self._jitter_s = profile.jitter_ms / 1000
        self._idle = not (self._bands or self._outages or self._base_delay_s or self._jitter_s)

    def decide(self, now: float) -> Decision:
        """The fault, if any, for a request arriving at `now`."""
        if self._idle:
            return _NO_FAULT
        delay = self._base_delay_s
        if self._jitter_s:
            delay += self._rng.uniform(0, self._jitter_s)
        action = Action.NONE
        if self._bands:
            draw = self._rng.random()
            for edge, banded in self._bands:
                if draw < edge:
                    action = banded
                    break
        # An outage wins over any drawn fault, but the draw above still happened, so the
        # sequence after the outage is the same as without it.
        if any(start <= now < end for start, end in self._outages):
            action = Action.OUTAGE
        return Decision(delay, action)

    def retry_after(self) -> dict[str, str]:
        """The Retry-After header for a 429, as the profile asks (none by default)."""
        mode = self.profile.retry_after
        if mode == "seconds":
            return {"Retry-After": str(math.ceil(self.profile.retry_after_s))}
        if mode == "http-date":
            # An HTTP date is absolute wall-clock time: the injected clock is monotonic.
            return {
                "Retry-After": formatdate(time.time() + self.profile.retry_after_s, usegmt=True)
            }
        return {}
