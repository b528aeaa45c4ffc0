"""Fault injection: what a `FaultProfile` does to one DER request.

One `random.Random(seed)` drives every decision, and each request draws the same number of
values whatever the outcome (one for jitter when jitter is on, one for the action when any
rate is set), so the same seed and the same sequence of requests give the same answers.
Outage windows draw nothing: they depend on the time alone, so the token endpoint, which
takes no draw, can share them.
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
    OUTAGE_DROP = "outage-dropped"  # connection closed unanswered inside a dropped outage
    DROP = "drop"  # connection closed, nothing done, no answer
    APPLY_THEN_DROP = "applied-then-dropped"  # change stored, then no answer


@dataclass(frozen=True, slots=True)
class Decision:
    """The delay before handling, and what to do then."""

    delay_s: float
    action: Action


_NO_FAULT = Decision(0.0, Action.NONE)

Windows = tuple[tuple[float, float], ...]


def _absolute(windows: Windows, started_at: float) -> Windows:
    return tuple((started_at + start, started_at + end) for start, end in windows)


def _inside(now: float, windows: Windows) -> bool:
    return any(start <= now < end for start, end in windows)


def _delay_seconds(seconds: float) -> dict[str, str]:
    # Delay-seconds is a whole number [RFC 9110 10.2.3]: rounding up never invites a client
    # back before the time asked.
    return {"Retry-After": str(math.ceil(seconds))}


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
        self._outages = _absolute(profile.outages, started_at)
        self._dropped_outages = _absolute(profile.dropped_outages, started_at)
        self._base_delay_s = profile.latency_ms / 1000
        self._jitter_s = profile.jitter_ms / 1000
        self._idle = not (
            self._bands
            or self._outages
            or self._dropped_outages
            or self._base_delay_s
            or self._jitter_s
        )

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
        outage = self.outage(now)
        if outage is not None:
            action = outage
        return Decision(delay, action)

    def outage(self, now: float, *, token: bool = False) -> Action | None:
        """OUTAGE or OUTAGE_DROP if `now` is inside a window of that kind, else None; for a
        token request (`token`), None unless the profile's outages cover the token
        endpoint."""
        if token and not self.profile.outages_cover_token:
            return None
        if _inside(now, self._outages):
            return Action.OUTAGE
        if _inside(now, self._dropped_outages):
            return Action.OUTAGE_DROP
        return None

    def outage_retry_after(self) -> dict[str, str]:
        """The Retry-After header for an outage's 503, as the profile asks (none by default)."""
        seconds = self.profile.outage_retry_after_s
        return {} if seconds is None else _delay_seconds(seconds)

    def retry_after(self) -> dict[str, str]:
        """The Retry-After header for a 429, as the profile asks (none by default)."""
        mode = self.profile.retry_after
        if mode == "seconds":
            return _delay_seconds(self.profile.retry_after_s)
        if mode == "http-date":
            # An HTTP date is absolute wall-clock time: the injected clock is monotonic.
            return {
                "Retry-After": formatdate(time.time() + self.profile.retry_after_s, usegmt=True)
            }
        return {}
