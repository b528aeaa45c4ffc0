"""Which failures retry, and how long to wait.

    HTTP status --classify()--> Verdict: DONE | RETRY | REFRESH_TOKEN | TERMINAL | STOP_RUN
    an answer to a write, in its context --decide()--> Meaning: what it means for the record
    exception   --isinstance(exc, RETRYABLE_EXCEPTIONS)--> retry; anything else propagates
    a retry     --Budget.next_delay()--> seconds to wait, or None: the record's budget is spent

The status table follows AEMO's WEM DER API Reference as docs/aemo-contract.md states it
("Responses and statuses"). `decide` is the one place that says what an answer to a write
means: the status table, refined by what the status alone cannot tell (the action, the
register's known refusals, a replay, the 403s before it); the submitter acts on its answer.
Waits use exponential backoff with full jitter (`full_jitter_s`, for every retry loop of
the package), and a Retry-After, when the server sends one, is a floor under the wait.
Sleeping and the quota are the caller's business: every attempt, retries included, goes
through the limiter.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

import aiohttp

from wem_der.records.outcomes import Action


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
        """The wait after failed attempt number `attempt` (1-based), drawn with full jitter."""
        return full_jitter_s(attempt, base_s=self.base_delay_s, cap_s=self.max_delay_s, rng=rng)


def full_jitter_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait after failed attempt number `attempt` (1-based): uniform(0, min(cap_s,
    base_s * 2**(attempt-1))).

    Drawing over the whole ceiling (full jitter) spreads the retries of callers that
    failed together instead of bunching them into waves.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    try:
        ceiling = min(cap_s, base_s * 2.0 ** (attempt - 1))
    except OverflowError:  # 2.0**1024 and beyond: long past cap_s anyway
        ceiling = cap_s
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
# What a register that is down answers, for the run's circuit breaker (send/breaker.py):
# the transient failures less the quota's 429, which says nothing about the register.
OUTAGE_STATUSES = _RETRY_STATUSES - {429}
# Wrong method, missing Content-Length, wrong media type [doc]: every record would fail alike.
_STOP_RUN_STATUSES = frozenset({405, 411, 415})


def classify(status: int) -> Verdict:
    """Map an HTTP status to a Verdict, by status alone.

    `decide` refines it with what else is known of a write's answer: 404 is TERMINAL here
    ("ID not found" for one NMI's update), but on a create, or worded otherwise, it means a
    wrong URL; a 2xx whose body is not the register's JSON stops the run; 403 is TERMINAL
    for the record, and 403s across records stop the run.
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


class Meaning(StrEnum):
    """What one answer to a write means for its record, in context (`decide`)."""

    ACCEPTED = "accepted"  # stored (read the body for second-level exceptions)
    RETRY = "retry"  # a transient failure: wait, then write again
    THROTTLED = "throttled"  # 429: the quota was overrun; every worker pauses
    # 401: refresh the token and replay at once. S105 mistakes this for a password.
    REFRESH_TOKEN = "refresh_token"  # noqa: S105
    REFRESH_FAILED = "refresh_failed"  # 401 again on the replay with a fresh token: failed
    CREATE_INSTEAD = "create_instead"  # an upsert's update found no record: create it
    UPDATE_INSTEAD = "update_instead"  # an upsert's create found one: update it
    NO_RECORD = "no_record"  # an update of an NMI with no record: rejected
    ALREADY_EXISTS = "already_exists"  # a create of an NMI with a record: rejected
    FORBIDDEN = "forbidden"  # 403: rejected, one more in a row
    REJECTED = "rejected"  # the record itself is refused; retrying cannot help
    # The client is misconfigured; more requests would burn the batch: the run stops.
    WRONG_URL = "wrong_url"  # a 404 that names no missing record
    NOT_THE_REGISTER = "not_the_register"  # a 2xx without the register's JSON object
    MISCONFIGURED = "misconfigured"  # a status no request of a sound client gets
    FORBIDDEN_EVERYWHERE = "forbidden_everywhere"  # too many 403s in a row


@dataclass(frozen=True, slots=True)
class Answered:
    """One answer to a write, with what `decide` needs to know around it."""

    status: int
    action: Action  # the write it answers: CREATE or UPDATE
    upsert: bool  # the run picks create or update for each record, so it may switch
    json_object: bool  # the body is a JSON object, as every answer of the register is
    replayed: bool  # the write was a replay with a token refreshed after a 401
    already_exists: bool  # the register's "this NMI already has a record" (KnownRefusal)
    record_missing: bool  # the register's "no record for this NMI" (KnownRefusal)
    forbidden_streak: int  # 403s in a row, across records, before this answer
    stop_after_forbidden: int  # the length of that streak that stops the run


def decide(answer: Answered) -> Meaning:
    """What `answer` means for its record: `classify`, refined by its context."""
    status = answer.status
    verdict = classify(status)
    if status == 404:
        # A create names no record that could be missing, and an update's 404 that is not
        # the register's "ID not found" came from a path nobody serves.
        if answer.action is Action.CREATE or not answer.record_missing:
            return Meaning.WRONG_URL
        return Meaning.CREATE_INSTEAD if answer.upsert else Meaning.NO_RECORD
    if verdict is Verdict.DONE:
        # The register answers every call with a JSON object [spec]. A 2xx of HTML, text
        # or nothing came from something else (a wrong host, a proxy's page), and counting
        # it accepted would make later runs skip a record it never saw.
        return Meaning.ACCEPTED if answer.json_object else Meaning.NOT_THE_REGISTER
    if verdict is Verdict.REFRESH_TOKEN:
        return Meaning.REFRESH_FAILED if answer.replayed else Meaning.REFRESH_TOKEN
    if verdict is Verdict.RETRY:
        # AEMO may throttle with 503 too [guess]; only a 429 says the quota was overrun.
        return Meaning.THROTTLED if status == 429 else Meaning.RETRY
    if verdict is Verdict.STOP_RUN:
        return Meaning.MISCONFIGURED
    if answer.action is Action.CREATE and answer.already_exists:
        return Meaning.UPDATE_INSTEAD if answer.upsert else Meaning.ALREADY_EXISTS
    if status == 403:
        if answer.forbidden_streak + 1 >= answer.stop_after_forbidden:
            return Meaning.FORBIDDEN_EVERYWHERE
        return Meaning.FORBIDDEN
    return Meaning.REJECTED


class TokenUnavailable(Exception):
    """The token endpoint gave no token, its own retries spent, for a reason that may pass
    (down, overloaded, unreachable): the request it was for was never sent, and is retried
    as one that met an outage."""


# Dropped or refused connections, timeouts and a token endpoint that is down, for every
# retry loop of the package. aiohttp's ServerTimeoutError is both a ClientConnectionError
# and a TimeoutError. Never bare Exception: a bug must surface.
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    TimeoutError,
    TokenUnavailable,
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
