"""QuotaLimiter and parse_rate, on virtual time: no test sleeps.

A clock that jumps by itself suits the limiter, which lets only the head of its queue
sleep; every sleep is logged in `sleeps`, so tests see that waits are computed, not
polled. Interleavings run on a clock the test moves (`autojump=False`).
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any

import pytest
from wem_der.send.quota import QuotaLimiter, parse_rate
from wem_der.testing import VirtualClock, settle


def limiter_on(time: VirtualClock, **settings: Any) -> QuotaLimiter:
    """A QuotaLimiter that reads and sleeps on the given virtual clock."""
    return QuotaLimiter(clock=time, sleep=time.sleep, **settings)


def at(time: VirtualClock, t: float) -> None:
    """Move `time` on to `t`."""
    time.jump(t - time())


def grants_in_windows(starts: list[float], period_s: float) -> int:
    """Brute force: the most starts in any half-open window (t - period_s, t]."""
    return max(i + 1 - bisect.bisect_right(starts, t - period_s) for i, t in enumerate(starts))


async def test_first_window_holds_exactly_count_then_waits_for_the_oldest() -> None:
    """From t=0, COUNT start at once; the next waits exactly until the oldest leaves the window."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=300, period_s=3.0)
        starts = []
        for _ in range(301):
            await limiter.acquire()
            starts.append(time())
        assert starts[:300] == [0.0] * 300
        assert starts[300] == 3.1  # period 3 s + default margin 0.1 s
        assert time.sleeps == [3.1]  # one computed sleep, no polling
        assert limiter.max_in_window == 300
        assert limiter.granted == 301


async def test_wait_is_computed_from_the_oldest_start() -> None:
    """A request over the limit sleeps once, until the oldest start plus the window."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=3, period_s=10.0, margin_s=0.5)
        for t in (0.0, 1.0, 2.0):
            at(time, t)
            await limiter.acquire()
        at(time, 2.5)
        await limiter.acquire()
        assert time() == 10.5
        assert time.sleeps == [8.0]


async def test_steady_state_uses_at_least_98_percent_and_never_exceeds_count() -> None:
    """6000/60s with the default margin: workers that always have work use >= 98% of the quota."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=6000, period_s=60.0)
        starts: list[float] = []

        async def worker() -> None:
            while time() < 5 * 60.0:
                await limiter.acquire()
                starts.append(time())

        async with asyncio.TaskGroup() as tasks:
            for _ in range(20):
                tasks.create_task(worker())

        assert grants_in_windows(starts, 60.0) == limiter.max_in_window == 6000
        # Steady-state rate: every run of 4 periods' worth of starts takes at most
        # 4 periods / 0.98 (the margin alone costs 0.17%).
        span = 4 * 6000
        longest = max(starts[i + span] - starts[i] for i in range(len(starts) - span))
        assert longest <= 4 * 60.0 / 0.98
        assert limiter.granted == len(starts) >= 5 * 6000 * 0.98


async def test_paced_arrivals_keep_every_window_at_count() -> None:
    """Starts spread through time (not bursts) still never put COUNT+1 in a window."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=100, period_s=1.0, margin_s=0.01)
        starts = []
        for i in range(2000):
            time.jump(0.003 * (i % 7))  # uneven gaps, faster on average than the quota
            await limiter.acquire()
            starts.append(time())
        assert grants_in_windows(starts, 1.0) == limiter.max_in_window == 100


async def test_max_in_window_is_exact_on_window_boundaries() -> None:
    """Windows are half-open like the server's: starts exactly a period apart do not share one."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=10, period_s=1.0, margin_s=0.0)
        for t in (0.0, 0.5, 1.0, 1.5):
            at(time, t)
            await limiter.acquire()
        assert limiter.max_in_window == 2
        at(time, 1.75)
        await limiter.acquire()
        assert limiter.max_in_window == 3


async def test_waiters_are_served_first_in_first_out() -> None:
    """Queued acquirers start in arrival order, and a newcomer cannot overtake them."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=2, period_s=10.0, margin_s=0.0)
        order: list[str] = []

        async def start(name: str) -> None:
            await limiter.acquire()
            order.append(f"{name}@{time():g}")

        async with asyncio.TaskGroup() as tasks:
            for name in "abcd":
                tasks.create_task(start(name))
                await settle()
            await time.advance(5.0)
            tasks.create_task(start("late"))
            await time.advance(5.0)
            await time.advance(10.0)
        assert order == ["a@0", "b@0", "c@10", "d@10", "late@20"]
        assert time.sleepers == 0


async def test_a_newcomer_cannot_take_the_slot_a_waiter_was_woken_for() -> None:
    """When a slot opens, the queued waiter gets it even if a newcomer runs first."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=1, period_s=10.0, margin_s=0.0)
        await limiter.acquire()
        order: list[str] = []

        async def start(name: str) -> None:
            await limiter.acquire()
            order.append(f"{name}@{time():g}")

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(start("queued"))
            await settle()  # at the head of the queue, asleep until the slot opens at 10
            tasks.create_task(start("newcomer"))
            # The slot opens before either runs: the newcomer, started first, finds it free.
            time.jump(10.0)
            await time.advance(10.0)
        assert order == ["queued@10", "newcomer@20"]


async def test_only_the_head_of_the_queue_sleeps() -> None:
    """Many waiters on a full window make one sleeper, not a herd."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=1, period_s=1.0, margin_s=0.0)
        waiters = [asyncio.create_task(limiter.acquire()) for _ in range(10)]
        await settle()
        assert sum(w.done() for w in waiters) == 1
        assert time.sleepers == 1
        await time.advance(9.0)
        assert all(w.done() for w in waiters)


async def test_pause_for_blocks_every_acquirer() -> None:
    """A pause holds all starts, queued before it or arriving during it."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=100, period_s=60.0)
        limiter.pause_for(10.0)
        waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
        await time.advance(5.0)
        waiters.append(asyncio.create_task(limiter.acquire()))
        await time.advance(4.5)
        assert not any(w.done() for w in waiters)
        assert limiter.granted == 0
        await time.advance(0.5)
        assert all(w.done() for w in waiters)
        assert limiter.granted == 4


async def test_pause_for_never_shortens_a_pause() -> None:
    """A shorter pause asked during a longer one leaves the longer end in place."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=100, period_s=60.0)
        limiter.pause_for(10.0)
        await time.advance(5.0)
        limiter.pause_for(2.0)  # would end at 7
        await time.advance(3.0)
        waiter = asyncio.create_task(limiter.acquire())
        await time.advance(1.5)
        assert not waiter.done()
        await time.advance(0.5)
        assert waiter.done()


async def test_pause_for_extends_a_running_pause() -> None:
    """A longer pause during a pause moves the end later, and waiters honour it."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=100, period_s=60.0)
        limiter.pause_for(10.0)
        waiter = asyncio.create_task(limiter.acquire())
        await time.advance(5.0)
        limiter.pause_for(10.0)  # now ends at 15
        await time.advance(9.5)
        assert not waiter.done()
        await time.advance(0.5)
        assert waiter.done()


def test_pause_for_rejects_an_unbounded_pause() -> None:
    """An infinite or NaN pause is a caller bug (an unclamped Retry-After)."""
    limiter = QuotaLimiter(count=1, period_s=1.0)
    with pytest.raises(ValueError, match="clamp"):
        limiter.pause_for(float("inf"))


async def test_throttled_lowers_once_per_burst_and_recovers_linearly() -> None:
    """Many 429s together cut the limit once; it climbs back to COUNT over recovery_s."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=100, period_s=10.0, margin_s=0.0)
        at(time, 3.0)
        for _ in range(50):
            limiter.throttled()
        assert limiter.limit == 70
        at(time, 3.0 + 5.1)  # 15.3 steps of 1/3 s
        assert limiter.limit == 85
        at(time, 3.0 + 9.9)
        assert limiter.limit == 99
        at(time, 3.0 + 10.0)
        assert limiter.limit == 100
        limiter.throttled()  # a window later: a new overshoot
        assert limiter.limit == 70


async def test_throttled_compounds_down_to_the_floor() -> None:
    """Overshoots a window apart cut again from the current limit, never below min_fraction."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=100, period_s=10.0, margin_s=0.0, recovery_s=1e9)
        limits = []
        for _ in range(8):
            limiter.throttled()
            limits.append(limiter.limit)
            time.jump(10.0)
        assert limits == [70, 49, 34, 23, 16, 11, 10, 10]


async def test_a_throttle_holds_starts_until_the_window_drains_or_the_limit_rises() -> None:
    """After a cut, a start waits for the earlier of enough expiries and the recovering limit."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0)
        limiter = limiter_on(time, count=100, period_s=10.0, margin_s=0.0)
        for i in range(100):
            at(time, i / 10)
            await limiter.acquire()
        at(time, 10.0)
        limiter.throttled()  # limit 70, +3 per second; the window holds 99 starts
        await limiter.acquire()
        # At 10 + 7/3 s the limit reaches 77 while 76 starts (those after 2.3 s) remain;
        # expiries alone would have held it until 13.0 s.
        assert time() == pytest.approx(10.0 + 7 / 3)
        assert len(time.sleeps) == 7  # one wake-up per rise of the limit, no polling
        assert limiter.max_in_window == 100


async def test_cancelling_a_sleeping_waiter_frees_the_queue() -> None:
    """A cancelled head of the queue records nothing and the next waiter takes over."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=1, period_s=10.0, margin_s=0.0)
        await limiter.acquire()
        head = asyncio.create_task(limiter.acquire())
        await settle()
        second = asyncio.create_task(limiter.acquire())
        await settle()
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        await time.advance(10.0)
        assert second.done()
        assert time() == 10.0
        assert limiter.granted == 2


async def test_cancelling_a_queued_waiter_leaks_nothing() -> None:
    """A waiter cancelled in the queue is skipped, and the fast path works again afterwards."""
    async with asyncio.timeout(5):
        time = VirtualClock(start=0.0, autojump=False)
        limiter = limiter_on(time, count=1, period_s=10.0, margin_s=0.0)
        await limiter.acquire()
        waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
        await settle()
        waiters[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiters[1]
        await time.advance(10.0)
        assert waiters[0].done()
        assert not waiters[2].done()
        await time.advance(10.0)
        assert waiters[2].done()
        assert limiter.granted == 3
        await time.advance(10.0)
        late = asyncio.create_task(limiter.acquire())
        await settle()
        assert late.done()
        assert time.sleepers == 0
        assert limiter.granted == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6000/60s", (6000, 60.0)),
        ("300/3s", (300, 3.0)),
        ("100/1s", (100, 1.0)),
        ("6000/1m", (6000, 60.0)),
        ("6000/60", (6000, 60.0)),
        (" 10 / 0.5S ", (10, 0.5)),
    ],
)
def test_parse_rate_reads_count_and_period(text: str, expected: tuple[int, float]) -> None:
    """COUNT/PERIOD with seconds by default and s or m as units."""
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text", ["", "6000", "6000/", "/60s", "6000/60x", "-1/60s", "6000/60s/2", "0/60s", "10/0s"]
)
def test_parse_rate_rejects_other_forms(text: str) -> None:
    """Anything else is a ValueError that names the expected form."""
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 0, "period_s": 60.0},
        {"count": 10, "period_s": 0.0},
        {"count": 10, "period_s": 60.0, "margin_s": -0.1},
        {"count": 10, "period_s": 60.0, "min_fraction": 0.0},
        {"count": 10, "period_s": 60.0, "decrease_factor": 1.0},
        {"count": 10, "period_s": 60.0, "recovery_s": 0.0},
    ],
)
def test_limiter_rejects_impossible_settings(kwargs: dict[str, Any]) -> None:
    """Settings that would stall or never limit are refused at construction."""
    with pytest.raises(ValueError, match="must"):
        QuotaLimiter(**kwargs)
