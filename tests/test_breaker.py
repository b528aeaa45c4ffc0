"""The run's circuit breaker, alone, on virtual time: when it opens, how it probes, what
closes it, when it gives up, and what it says."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import datetime

import aiohttp
import pytest
from wem_der.send.breaker import Breaker, RegisterDown, parse_duration, shown_duration
from wem_der.send.diagnose import Diagnosis
from wem_der.send.retry import TokenUnavailable
from wem_der.testing import VirtualClock, settle

DROPPED = aiohttp.ServerDisconnectedError()


def breaker(clock: VirtualClock, **overrides: object) -> Breaker:
    options: dict[str, object] = {
        "opens_after": 3,
        "probe_base_s": 1.0,
        "probe_cap_s": 60.0,
        "max_outage_s": 3600.0,
        "clock": clock,
        "sleep": clock.sleep,
        "rng": random.Random(7),
    }
    return Breaker(**(options | overrides))  # type: ignore[arg-type]


def test_outage_failures_in_a_row_open_it_and_an_answer_between_resets_them() -> None:
    clock = VirtualClock()
    b = breaker(clock)
    b.answered(503, probe=False)
    b.failed(DROPPED, probe=False)
    b.answered(422, probe=False)  # the register answered: it is up
    b.answered(503, probe=False)
    b.answered(429, probe=False)  # the quota's business: neither up nor down
    b.answered(500, probe=False)
    assert not b.is_open
    b.answered(504, probe=False)
    assert b.is_open
    assert len(b.outages) == 1


def test_a_4xx_and_a_2xx_count_as_the_register_up() -> None:
    clock = VirtualClock()
    for status in (200, 201, 400, 401, 404, 422):
        b = breaker(clock, opens_after=2)
        b.answered(503, probe=False)
        b.answered(status, probe=False)
        b.answered(503, probe=False)
        assert not b.is_open, status


async def test_after_an_outage_failure_attempts_go_one_at_a_time_until_an_answer() -> None:
    """A register going down meets the failures that open the breaker, not a burst: after
    one outage failure, one attempt goes at a time, at once; an answer lets all go."""
    clock = VirtualClock(autojump=False)
    b = breaker(clock)
    assert await b.admit() is False  # all well: no turn to wait for
    b.answered(503, probe=False)
    started = clock()
    async with asyncio.timeout(5):
        assert await b.admit() is True  # the one that goes alone, without a wait
        second = asyncio.create_task(b.admit())
        third = asyncio.create_task(b.admit())
        await settle()
        assert not second.done()
        assert not third.done()
        b.answered(503, probe=True)  # one more failure: the next goes alone
        await settle()
        assert sum(task.done() for task in (second, third)) == 1
        b.answered(201, probe=True)  # an answer: the register is up
        await asyncio.gather(second, third)
        assert await b.admit() is False
    assert clock() == started
    assert not b.is_open


async def test_while_open_only_one_probe_goes_at_a_time() -> None:
    clock = VirtualClock(autojump=False)
    b = breaker(clock, opens_after=1)
    b.answered(503, probe=False)
    opened = clock()
    turns: list[tuple[int, float, bool]] = []

    async def attempt(n: int) -> None:
        probe = await b.admit()
        turns.append((n, clock() - opened, probe))

    async with asyncio.timeout(5):
        tasks = [asyncio.create_task(attempt(n)) for n in range(5)]
        await settle()
        assert turns == []  # all wait for the first probe
        await clock.advance(1.0)
        assert len(turns) == 1  # one probe, due within a second
        assert turns[0][2]
        assert 0.5 <= turns[0][1] <= 1.0
        await clock.advance(120.0)
        assert len(turns) == 1  # the others wait for the probe's answer, however long
        b.answered(200, probe=True)  # the first success closes it
        await asyncio.gather(*tasks)
    assert not b.is_open
    assert [probe for _, _, probe in turns] == [True, False, False, False, False]


async def test_probes_back_off_to_the_cap_and_honour_retry_after() -> None:
    clock = VirtualClock()
    b = breaker(clock, opens_after=1, probe_cap_s=8.0)
    b.failed(DROPPED, probe=False)
    at: list[float] = []
    async with asyncio.timeout(5):
        for n in range(7):
            assert await b.admit()
            at.append(clock())
            b.failed(DROPPED, probe=True, retry_after_s=20.0 if n == 5 else None)
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    # Doubling ceilings 2, 4, 8, 8, with the wait drawn in the upper half of each ...
    for gap, ceiling in zip(gaps, (2.0, 4.0, 8.0, 8.0, 8.0), strict=False):
        assert ceiling / 2 <= gap <= ceiling
    # ... and never shorter than a Retry-After the probe's answer carried.
    assert gaps[5] >= 20.0
    assert b.outages[0].probes == 7


async def test_a_probe_that_ends_without_an_answer_hands_over_at_once() -> None:
    clock = VirtualClock(autojump=False)
    b = breaker(clock, opens_after=1)
    b.answered(503, probe=False)
    async with asyncio.timeout(5):
        first = asyncio.create_task(b.admit())
        await clock.advance(1.0)
        assert first.result()
        waiting = asyncio.create_task(b.admit())
        await settle()
        assert not waiting.done()
        before = clock()
        b.release()  # the probe's record was stopped
        assert await waiting
    assert clock() == before


async def test_a_429_on_the_probe_reschedules_it_and_closes_nothing() -> None:
    clock = VirtualClock()
    b = breaker(clock, opens_after=1)
    b.answered(503, probe=False)
    async with asyncio.timeout(5):
        assert await b.admit()
        b.answered(429, probe=True, retry_after_s=30.0)
        assert b.is_open
        start = clock()
        assert await b.admit()
    assert clock() - start >= 30.0


async def test_an_outage_longer_than_the_maximum_stops_every_waiter() -> None:
    clock = VirtualClock()
    b = breaker(clock, opens_after=1, max_outage_s=600.0)
    b.failed(DROPPED, probe=False)
    opened = clock()

    async def attempt() -> None:
        while True:
            probe = await b.admit()
            if probe:
                b.failed(DROPPED, probe=True)

    async with asyncio.timeout(5):
        results = await asyncio.gather(*(attempt() for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, RegisterDown) for r in results)
    assert clock() - opened == pytest.approx(600.0)
    message = str(results[0])
    assert "10 min 00 s" in message
    assert "--max-outage" in message
    assert "wem-der resume" in message
    # No wait was longer than the cap: the probes went on until the end.
    assert b.outages[0].probes >= 10
    assert b.outages[0].end is None


async def test_uptime_and_down_time_leave_out_the_outage() -> None:
    clock = VirtualClock()
    b = breaker(clock, opens_after=1)
    start_up = b.uptime()
    clock.jump(10.0)
    b.answered(503, probe=False)
    clock.jump(50.0)
    assert b.down_s() == pytest.approx(50.0)
    assert b.uptime() - start_up == pytest.approx(10.0)
    b.answered(200, probe=False)
    clock.jump(5.0)
    assert b.down_s() == pytest.approx(50.0)
    assert b.uptime() - start_up == pytest.approx(15.0)
    listed = b.listed()
    assert len(listed) == 1
    start = datetime.fromisoformat(str(listed[0]["start"]))
    end = datetime.fromisoformat(str(listed[0]["end"]))
    assert (end - start).total_seconds() == pytest.approx(50.0)
    assert listed[0]["probes"] == 0
    assert "cause" not in listed[0]


async def test_status_says_since_when_and_the_next_probe() -> None:
    clock = VirtualClock()
    b = breaker(clock, opens_after=1)
    assert b.status() is None
    b.answered(503, probe=False)
    status = b.status()
    assert status is not None
    assert status.startswith("register unavailable since ")
    assert "next probe in 1 s" in status
    async with asyncio.timeout(5):
        assert await b.admit()
    assert "probing now" in str(b.status())
    b.answered(200, probe=True)
    assert b.status() is None


def test_a_cause_is_named_only_when_nothing_has_answered_yet() -> None:
    clock = VirtualClock()
    diagnose = Diagnosis("https://register.example/api", client_cert=False)
    b = breaker(clock, opens_after=2, diagnose=diagnose)
    b.failed(DROPPED, probe=False)
    b.failed(DROPPED, probe=False)
    cause = b.outages[0].cause
    assert cause is not None
    assert "is --client-cert set?" in cause
    assert b.listed()[0]["cause"] == cause
    assert cause in str(b.status())

    answered_once = breaker(clock, opens_after=2, diagnose=diagnose)
    answered_once.answered(503, probe=False)
    answered_once.failed(DROPPED, probe=False)
    assert answered_once.is_open
    assert answered_once.outages[0].cause is None


@pytest.mark.parametrize(
    ("url", "cert", "exc", "expected"),
    [
        ("https://r.example/api", False, DROPPED, "is --client-cert set?"),
        ("https://r.example/api", True, DROPPED, "the pair AEMO registered"),
        ("http://r.example/api", False, DROPPED, None),
        ("https://r.example/api", False, TimeoutError(), "--timeout-s"),
        ("https://r.example/api", False, TokenUnavailable("the token endpoint X"), "--token-url"),
    ],
)
def test_the_likely_cause_of_a_transport_failure(
    url: str, cert: bool, exc: BaseException, expected: str | None
) -> None:
    cause = Diagnosis(url, client_cert=cert)(exc)
    if expected is None:
        assert cause is None
    else:
        assert cause is not None
        assert expected in cause


async def test_a_refused_connection_names_the_host_and_port(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/api"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(url)
    cause = Diagnosis(url, client_cert=False)(caught.value)
    assert cause is not None
    assert f"127.0.0.1:{unused_tcp_port}" in cause


@pytest.mark.parametrize(
    ("text", "seconds"), [("3h", 10800.0), ("45m", 2700.0), ("90s", 90.0), ("600", 600.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3 hours", "-5m", "1d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_shown_durations() -> None:
    assert shown_duration(40.2) == "41 s"
    assert shown_duration(250) == "4 min 10 s"
    assert shown_duration(3900) == "1 h 05 min"
