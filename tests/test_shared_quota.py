"""The quota shared by jobs: one log per participant and register (`SqliteLog` on one host),
the per-second ceiling, the shared pause after a 429 and `max_share`, on virtual time."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from wem_der.send.quota import QuotaLimiter, parse_burst
from wem_der.send.quota_store import BUSY_RETRY_S, QUOTA_FILE, Ask, SqliteLog, Taken, shown_url
from wem_der.simulator import Simulator
from wem_der.testing import VirtualClock

from tests.e2e import read_outcomes, records, run_settings, sim_settings, submit, write_jsonl
from tests.test_limiter import grants_in_windows

KEY = "TESTNSP@127.0.0.1-v2-der-register"


async def run_jobs(
    clock: Callable[[], float],
    limiters: dict[str, QuotaLimiter],
    *,
    until: float,
    workers: int = 4,
) -> dict[str, list[float]]:
    """Each job's workers take the quota as fast as it allows until `until`; the starts."""
    starts: dict[str, list[float]] = {name: [] for name in limiters}

    async def worker(name: str) -> None:
        while clock() < until:
            await limiters[name].acquire()
            starts[name].append(clock())

    async with asyncio.TaskGroup() as tasks:
        for name in limiters:
            for _ in range(workers):
                tasks.create_task(worker(name))
    return starts


def sqlite_log(tmp_path: Path, clock: VirtualClock, owner: str) -> SqliteLog:
    return SqliteLog(tmp_path / QUOTA_FILE, key=KEY, owner=owner, clock=clock)


async def job_limiter(
    stack: AsyncExitStack,
    tmp_path: Path,
    clock: VirtualClock,
    owner: str,
    *,
    period_s: float = 1.0,
    margin_s: float = 0.1,
    max_share: float | None = None,
) -> QuotaLimiter:
    """One job's limiter of 100 requests per `period_s` on the quota file in `tmp_path`, on
    virtual time; its log stays open until `stack` closes."""
    return QuotaLimiter(
        count=100,
        period_s=period_s,
        margin_s=margin_s,
        max_share=max_share,
        log=await stack.enter_async_context(sqlite_log(tmp_path, clock, owner)),
        clock=clock,
        sleep=clock.sleep,
    )


async def test_two_jobs_on_one_state_directory_never_overrun_the_quota(tmp_path: Path) -> None:
    """Two limiters on one quota file: no window holds over COUNT from both together, both
    get starts, and together they use the quota as one would."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        clock = VirtualClock(start=0.0)
        limiters = {
            name: await job_limiter(stack, tmp_path, clock, name, margin_s=0.01)
            for name in ("a", "b")
        }
        starts = await run_jobs(clock, limiters, until=10.0)
    together = sorted(starts["a"] + starts["b"])
    assert grants_in_windows(together, 1.0) == 100
    assert min(len(starts["a"]), len(starts["b"])) >= 100
    # Ten periods of 1.01 s: 990 starts allow 0.99 of the quota, the margin costing 1%.
    assert len(together) >= 990


async def test_a_job_that_starts_later_sees_what_a_gone_one_sent(tmp_path: Path) -> None:
    """What a process (now gone, as after kill -9) sent within the period still counts: a
    new one on the same state directory waits for it to leave the window."""
    async with asyncio.timeout(30):
        clock = VirtualClock(start=0.0)
        async with sqlite_log(tmp_path, clock, "gone") as log:
            first = QuotaLimiter(count=20, period_s=1.0, log=log, clock=clock, sleep=clock.sleep)
            for _ in range(20):
                await first.acquire()
        clock.jump(0.4)
        async with sqlite_log(tmp_path, clock, "resumed") as log:
            second = QuotaLimiter(count=20, period_s=1.0, log=log, clock=clock, sleep=clock.sleep)
            await second.acquire()
            granted_at = clock()
    assert granted_at == pytest.approx(1.1)  # the first start plus period and margin


async def test_a_log_from_before_the_clock_started_again_is_forgotten(tmp_path: Path) -> None:
    """Starts stamped later than the clock now reads (the machine restarted, and its
    monotonic clock with it) do not hold a new job for ever."""
    async with asyncio.timeout(30):
        before = VirtualClock(start=5000.0)
        async with sqlite_log(tmp_path, before, "old") as log:
            assert await log.take(Ask(limit=1, window_s=60.0)) == Taken(0.0)
        after = VirtualClock(start=10.0)
        async with sqlite_log(tmp_path, after, "new") as log:
            assert await log.take(Ask(limit=1, window_s=60.0)) == Taken(0.0)
            assert (await log.take(Ask(limit=1, window_s=60.0))).wait_s == pytest.approx(60.0)


async def test_a_grant_that_finds_the_log_locked_waits_a_moment(tmp_path: Path) -> None:
    """Another process inside its grant: the answer is a short wait, not a blocked loop."""
    async with asyncio.timeout(30):
        clock = VirtualClock(start=0.0)
        async with sqlite_log(tmp_path, clock, "a") as log:
            other = sqlite3.connect(tmp_path / QUOTA_FILE, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                assert await log.take(Ask(limit=5, window_s=1.0)) == Taken(BUSY_RETRY_S)
                other.execute("ROLLBACK")
            finally:
                other.close()
            assert await log.take(Ask(limit=5, window_s=1.0)) == Taken(0.0)


async def test_a_429_pauses_every_job_and_lowers_their_rate(tmp_path: Path) -> None:
    """A pause one job takes after a 429 holds the other job too, which lowers its own
    limit as if it had seen the 429."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        clock = VirtualClock(start=0.0)
        a, b = [
            await job_limiter(stack, tmp_path, clock, name, period_s=10.0) for name in ("a", "b")
        ]
        await b.acquire()
        a.throttled()
        a.pause_for(5.0)
        retry = asyncio.create_task(a.acquire())  # the retry carries the pause to the log
        await asyncio.sleep(0)
        await b.acquire()
        b_at, limits = clock(), (a.limit, b.limit)
        await retry
    assert b_at == pytest.approx(5.0)
    # Both were cut to 70 at 0 s, b when it met the pause, and have climbed half way back.
    assert limits == (85, 85)


async def test_max_share_caps_one_job_and_the_other_borrows_the_rest(tmp_path: Path) -> None:
    """With --max-share 0.25 a job never holds over a quarter of any window; the other job
    takes what it leaves, so the quota is still used in full."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        clock = VirtualClock(start=0.0)
        limiters = {
            name: await job_limiter(stack, tmp_path, clock, name, margin_s=0.01, max_share=share)
            for name, share in (("capped", 0.25), ("free", None))
        }
        starts = await run_jobs(clock, limiters, until=10.0)
    assert grants_in_windows(starts["capped"], 1.0) == 25
    assert grants_in_windows(sorted(starts["capped"] + starts["free"]), 1.0) == 100
    assert len(starts["capped"]) + len(starts["free"]) >= 990


async def test_the_ceiling_smooths_the_first_minute_and_keeps_the_rate() -> None:
    """6000/60s under the default ceiling of 100 a second: no second holds over 100 (the
    first one included, where the window alone would allow 6000), no minute over 6000,
    and steady state still uses at least 98% of the quota."""
    async with asyncio.timeout(60):
        clock = VirtualClock(start=0.0)
        limiter = QuotaLimiter(
            count=6000,
            period_s=60.0,
            burst=parse_burst(None, 6000, 60.0),
            clock=clock,
            sleep=clock.sleep,
        )
        starts = (await run_jobs(clock, {"job": limiter}, until=180.0, workers=20))["job"]
    assert grants_in_windows(starts, 1.0) == 100
    assert grants_in_windows(starts, 60.0) == limiter.max_in_window == 6000
    steady = [t for t in starts if 60.0 <= t < 180.0]
    assert len(steady) >= 0.98 * 2 * 6000


@pytest.mark.parametrize(("burst", "refused"), [(None, False), ("off", True)])
async def test_a_default_submit_passes_a_gateway_that_counts_seconds(
    tmp_path: Path, burst: str | None, refused: bool
) -> None:
    """A register that allows 100 requests in any second: a default submit (6000/60s, the
    ceiling at 100 a second) earns no 429 and takes the quota's time within 15%; without
    the ceiling it bursts into the register's second and earns 429s."""
    async with asyncio.timeout(60):
        clock = VirtualClock()
        path = write_jsonl(tmp_path / "in.jsonl", records(500))
        spike_arrest = sim_settings(quota_count=100, quota_period_s=1.0)
        async with Simulator(spike_arrest, clock=clock, sleep=clock.sleep) as sim:
            settings = run_settings(sim, tmp_path, concurrency=100, burst=burst)
            started = clock()
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            took_s = clock() - started
            stats = sim.stats()
    if refused:
        assert stats["http_429"] > 0
        return
    assert len(read_outcomes(tmp_path / "out")["accepted"]) == 500
    assert result.exit_code == 0
    assert stats["http_429"] == 0
    assert stats["max_requests_in_window"] == 100
    assert took_s <= 5.0 * 1.15  # 500 requests at 100 a second


@pytest.mark.parametrize(
    ("text", "count", "period_s", "expected"),
    [
        (None, 6000, 60.0, (100, 1.0)),
        (None, 300, 3.0, (100, 1.0)),
        (None, 10, 60.0, (1, 1.0)),
        (None, 20, 1.0, None),  # the quota's own window already is one second
        ("off", 6000, 60.0, None),
        ("50/1s", 6000, 60.0, (50, 1.0)),
        ("300/2s", 200, 1.0, (300, 2.0)),  # longer than the quota's window: it may bind
    ],
)
def test_parse_burst_defaults_to_the_average_rate(
    text: str | None, count: int, period_s: float, expected: tuple[int, float] | None
) -> None:
    """The ceiling is the quota's average over a second unless set; 'off' lifts it."""
    assert parse_burst(text, count, period_s) == expected


def test_a_store_is_named_without_its_password() -> None:
    """What messages and run.json show of a Redis URL: no user, password or query."""
    assert shown_url("redis://user:pa55@[::1]:6380/2?x=1") == "redis://[::1]:6380/2"
    assert shown_url("rediss://:pa55@cache.example:6379/0") == "rediss://cache.example:6379/0"
