"""Retry policy, status classification, Retry-After parsing and the per-record budget."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import aiohttp
import pytest
from wem_der.send.retry import (
    RETRYABLE_EXCEPTIONS,
    Budget,
    RetryPolicy,
    Verdict,
    classify,
    parse_retry_after,
)
from wem_der.testing import VirtualClock

NOW = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 7, 12])
def test_backoff_is_full_jitter_under_the_exponential_ceiling(attempt: int) -> None:
    """Waits spread over [0, min(max, base * 2**(attempt-1))], averaging half the ceiling."""
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=30.0)
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    rng = random.Random(attempt)
    samples = [policy.backoff_s(attempt, rng) for _ in range(2000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    assert min(samples) < 0.05 * ceiling
    assert max(samples) > 0.95 * ceiling
    assert sum(samples) / len(samples) == pytest.approx(ceiling / 2, rel=0.05)


def test_backoff_is_reproducible_with_a_seed() -> None:
    """The same seed gives the same waits, so runs and tests can be replayed."""
    policy = RetryPolicy()
    first = [policy.backoff_s(n, random.Random(7)) for n in range(1, 9)]
    again = [policy.backoff_s(n, random.Random(7)) for n in range(1, 9)]
    assert first == again


def test_backoff_stays_at_max_delay_for_huge_attempt_numbers() -> None:
    """No overflow far past the cap: the ceiling is max_delay_s."""
    policy = RetryPolicy(max_delay_s=30.0)
    assert 0.0 <= policy.backoff_s(5000, random.Random(1)) <= 30.0


def test_backoff_rejects_attempt_zero() -> None:
    """Attempts are numbered from 1."""
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().backoff_s(0, random.Random(1))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"base_delay_s": -1.0}, {"max_elapsed_s": float("nan")}],
)
def test_policy_rejects_impossible_settings(kwargs: dict[str, float]) -> None:
    """A policy that cannot work is refused when built."""
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DONE),
        (201, Verdict.DONE),
        (204, Verdict.DONE),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (401, Verdict.REFRESH_TOKEN),
        (400, Verdict.TERMINAL),
        (403, Verdict.TERMINAL),
        (404, Verdict.TERMINAL),
        (413, Verdict.TERMINAL),
        (422, Verdict.TERMINAL),
        (409, Verdict.TERMINAL),
        (501, Verdict.TERMINAL),
        (405, Verdict.STOP_RUN),
        (411, Verdict.STOP_RUN),
        (415, Verdict.STOP_RUN),
        (301, Verdict.STOP_RUN),
        (100, Verdict.STOP_RUN),
    ],
)
def test_classify_maps_statuses_to_verdicts(status: int, verdict: Verdict) -> None:
    """The status table of docs/aemo-contract.md ("Responses and statuses")."""
    assert classify(status) is verdict


@pytest.mark.parametrize("status", [0, 99, 600, -200])
def test_classify_rejects_non_http_numbers(status: int) -> None:
    """A number outside 100-599 is a bug upstream, not a verdict."""
    with pytest.raises(ValueError, match="not an HTTP status"):
        classify(status)


def test_verdict_values_are_stable_strings() -> None:
    """Verdicts are written to logs and outcome files by value."""
    assert [v.value for v in Verdict] == ["done", "retry", "refresh_token", "terminal", "stop_run"]


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ServerTimeoutError(),
        aiohttp.ClientConnectionResetError(),
        TimeoutError(),
    ],
)
def test_connection_failures_and_timeouts_are_retryable(error: BaseException) -> None:
    """Dropped connections and timeouts are transient."""
    assert isinstance(error, RETRYABLE_EXCEPTIONS)


@pytest.mark.parametrize(
    "error",
    [ValueError("bug"), KeyError("bug"), aiohttp.ClientPayloadError(), asyncio.CancelledError()],
)
def test_bugs_and_cancellation_are_not_retryable(error: BaseException) -> None:
    """Only named transient failures retry; a bug or a cancellation must surface."""
    assert not isinstance(error, RETRYABLE_EXCEPTIONS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),  # already past: go now
        ("Wed, 21 Oct 2026 07:28:10 -0000", 10.0),
        ("999999", 300.0),  # clamped to the cap
        ("Thu, 22 Oct 2026 07:28:00 GMT", 300.0),
        ("9" * 400, 300.0),
    ],
)
def test_parse_retry_after_reads_seconds_and_dates(value: str, expected: float) -> None:
    """Seconds or an HTTP date become seconds from now, within [0, cap]."""
    assert parse_retry_after(value, now=NOW, cap_s=300.0) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "-1", "nan", "inf", "1e3", "Wed, 99 Foo 2026"])
def test_parse_retry_after_ignores_garbage(value: str | None) -> None:
    """An absent or unreadable header gives None, so the caller falls back to backoff."""
    assert parse_retry_after(value, now=NOW, cap_s=300.0) is None


def test_parse_retry_after_needs_an_aware_now() -> None:
    """A naive now would silently mix local time with GMT."""
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_retry_after("2", now=datetime(2026, 1, 1), cap_s=300.0)


def test_budget_runs_out_of_attempts() -> None:
    """With max_attempts=3, two waits are granted and the third failure ends the record."""
    clock = VirtualClock(start=100.0)
    budget = Budget(RetryPolicy(max_attempts=3, base_delay_s=0.0), clock=clock)
    assert budget.next_delay(random.Random(1), None) == 0.0
    assert budget.next_delay(random.Random(1), None) == 0.0
    assert budget.next_delay(random.Random(1), None) is None
    assert budget.attempts == 3


def test_budget_runs_out_of_time_counting_the_coming_wait() -> None:
    """A wait that would end past max_elapsed_s is refused even though time remains now."""
    clock = VirtualClock(start=100.0)
    budget = Budget(RetryPolicy(max_elapsed_s=10.0, base_delay_s=0.0), clock=clock)
    clock.jump(5.0)
    assert budget.next_delay(random.Random(1), 4.0) == 4.0
    clock.jump(4.0)
    assert budget.next_delay(random.Random(1), 1.0) == 1.0  # ends exactly at 10 s
    clock.jump(1.0)
    assert budget.next_delay(random.Random(1), 0.5) is None


def test_budget_waits_at_least_the_retry_after_up_to_its_cap() -> None:
    """The wait is max(backoff, Retry-After), and a Retry-After beyond the cap is cut to it."""
    policy = RetryPolicy(base_delay_s=0.5, retry_after_cap_s=20.0, max_elapsed_s=600.0)
    budget = Budget(policy, clock=VirtualClock(start=100.0))
    assert budget.next_delay(random.Random(1), 7.0) == 7.0
    assert budget.next_delay(random.Random(1), 90.0) == 20.0
    without = Budget(policy, clock=VirtualClock(start=100.0)).next_delay(random.Random(3), None)
    assert without is not None
    assert 0.0 <= without <= 0.5
