"""Which failures retry, and how long to wait.

    HTTP status --classify()--> Verdict: DONE | RETRY | REFRESH_TOKEN | TERMINAL | STOP_RUN
    exception   --isinstance(exc, RETRYABLE_EXCEPTIONS)--> retry; anything else propagates
    a retry     --Budget.next_delay()--> seconds to wait, or None: the record's budget is spent

The status table follows AEMO's WEM DER API Reference as docs/aemo-contract.md states it
("Responses and statuses"). Waits use exponential backoff with full jitter, and a
Retry-After, when the server sends one, is a floor under the wait. Sleeping and the quota
are the caller's business: every attempt, retries included, goes through the limiter.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

import aiohttp


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long one record may be retried; production defaults."""

    max_attempts: int = 12  # per record, counting the first
    max_elapsed_s: float = 600.0  # per record, from its first attempt to the start of its last
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    retry_after_cap_s: float = 300.0  # a Retry-After is honoured up to this

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be >= 1 (the first attempt counts), not {self.max_attempts}"
            )
        for name in ("max_elapsed_s", "base_delay_s", "max_delay_s", "retry_after_cap_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be a number >= 0, not {getattr(self, name)}")

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed attempt number `attempt` (1-based), drawn with full jitter.

        Full jitter, uniform(0, min(max_delay, base * 2**(attempt-1))), spreads the retries
        of workers that failed together instead of bunching them into waves; see Marc
        Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015.
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, not {attempt}")
        try:
            ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        except OverflowError:  # 2.0**1024 and beyond: long past max_delay_s anyway
            ceiling = self.max_delay_s
        return rng.uniform(0.0, ceiling)


class Verdict(StrEnum):
    """What to do with a record after one HTTP answer."""

    DONE = "done"  # 2xx: stored (read the body for second-level exceptions)
    RETRY = "retry"  # throttled or a transient server failure: wait, then try again
    # 401: refresh the token once and replay. S105 mistakes this verdict's name for a password.
    REFRESH_TOKEN = "refresh_token"  # noqa: S105
    TERMINAL = "terminal"  # the record itself is refused; retrying cannot help
    STOP_RUN = "stop_run"  # the client is misconfigured; more requests would burn the batch


# 408: the gateway gave up waiting for the request, so nothing was processed. 429 is the
# quota [doc]; 500/502/503/504 are transient, and AEMO also uses 503 to throttle [guess].
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Wrong method, missing Content-Length, wrong media type [doc]: every record would fail alike.
_STOP_RUN_STATUSES = frozenset({405, 411, 415})


def classify(status: int) -> Verdict:
    """Map an HTTP status to a Verdict.

    By status alone: the caller reads the answer too. 404 comes back TERMINAL ("ID not
    found" for one NMI's update); on a create, or worded otherwise, it means a wrong URL,
    and the caller escalates it to STOP_RUN, as it does a 2xx whose body is not the
    register's JSON. 403 is TERMINAL for the record; 403s across records are the caller's
    cue to stop the run.
    """
    if not 100 <= status <= 599:
        raise ValueError(f"{status} is not an HTTP status code (100-599)")
    if 200 <= status <= 299:
        return Verdict.DONE
    if status in _RETRY_STATUSES:
        return Verdict.RETRY
    if status == 401:
        return Verdict.REFRESH_TOKEN
    if status in _STOP_RUN_STATUSES:
        return Verdict.STOP_RUN
    if status >= 400:
        # 400 (schema, code 1020), 403, 404, 413 (over 10 MB), 422 (business rules 1000-1999),
        # and 5xx not known to be transient (501, 505, ...), where a replay would fail alike.
        return Verdict.TERMINAL
    # 1xx and 3xx are outside the API's contract: a redirect means the base URL is wrong.
    return Verdict.STOP_RUN


# Dropped or refused connections and timeouts. aiohttp's ServerTimeoutError is both a
# ClientConnectionError and an asyncio.TimeoutError. Never bare Exception: a bug must surface.
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    asyncio.TimeoutError,
)

_DELAY_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, *, now: datetime, cap_s: float) -> float | None:
    """Seconds to wait from a Retry-After header ("2" or an HTTP date), clamped to [0, cap_s].

    Returns None when the header is absent or unreadable; the caller then uses its backoff.
    `now` must be timezone-aware (an HTTP date is in GMT).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        # Digits only (RFC 9110 delay-seconds): float() alone would also accept "nan", "-1".
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):  # not a date at all
            return None
        if when.tzinfo is None:  # "-0000" means UTC with no claim about local time
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(cap_s, max(0.0, seconds))


class Budget:
    """One record's retry budget: attempts made and time since the first, by an injected clock."""

    __slots__ = ("_attempts", "_clock", "_policy", "_started")

    def __init__(self, policy: RetryPolicy, *, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._started = clock()
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """How many failed attempts `next_delay` has been told about."""
        return self._attempts

    def next_delay(self, rng: random.Random, retry_after_s: float | None) -> float | None:
        """Count one failed attempt; return the wait before the next, or None if none is left.

        The wait is max(backoff, Retry-After). None when the attempts are used up, or when
        the wait would end past `max_elapsed_s` from the first attempt.
        """
        policy = self._policy
        self._attempts += 1
        if self._attempts >= policy.max_attempts:
            return None
        delay = policy.backoff_s(self._attempts, rng)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, policy.retry_after_cap_s))
        if self._clock() - self._started + delay > policy.max_elapsed_s:
            return None
        return delay
