"""The quota shared through a real Redis (`RedisLog`): jobs that never overrun it together,
the shared pause, `max_share`, and a Redis lost, back empty, or lost for good.

The log runs on the Redis server's clock, so these tests keep real time: short quotas
(a window of about a second) and bounded waits.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis
from wem_der.errors import ConfigError, QuotaStoreLost
from wem_der.send.quota import QuotaLimiter
from wem_der.send.quota_redis import RedisLog

from tests.redis_server import RedisServer, free_port
from tests.test_limiter import grants_in_windows
from tests.test_shared_quota import KEY, run_jobs

OUTAGE_S = 0.3


async def redis_limiters(
    stack: AsyncExitStack,
    url: str,
    shares: dict[str, float | None],
    *,
    count: int = 20,
    wait_s: float = 30.0,
) -> dict[str, QuotaLimiter]:
    """One limiter a job, each with its own connection to the Redis at `url`."""
    limiters = {}
    for owner, share in shares.items():
        log = await stack.enter_async_context(
            RedisLog(url, key=KEY, owner=owner, clock=time.monotonic, sleep=asyncio.sleep,
                     wait_s=wait_s)
        )  # fmt: skip
        limiters[owner] = QuotaLimiter(count=count, period_s=1.0, max_share=share, log=log)
    return limiters


async def test_two_jobs_through_redis_never_overrun_the_quota(redis_server: RedisServer) -> None:
    """Two jobs, each with its own connection: no second holds over 20 starts of both, and
    each gets a part."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        limiters = await redis_limiters(stack, redis_server.url, {"a": None, "b": None})
        until = time.monotonic() + 2.5
        starts = await run_jobs(time.monotonic, limiters, until=until)
    together = sorted(starts["a"] + starts["b"])
    assert grants_in_windows(together, 1.0) == 20
    assert min(len(starts["a"]), len(starts["b"])) > 0
    assert len(together) >= 40  # at least two windows' worth in 2.5 s


async def test_a_429_in_one_job_pauses_the_other(redis_server: RedisServer) -> None:
    """The pause a 429 starts in one job holds every job sharing the store, which lowers its
    rate as well."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        limiters = await redis_limiters(stack, redis_server.url, {"a": None, "b": None})
        a, b = limiters["a"], limiters["b"]
        await b.acquire()
        a.throttled()
        a.pause_for(0.5)
        started = time.monotonic()
        retry = asyncio.create_task(a.acquire())  # the retry after the 429 carries the pause
        redis = await stack.enter_async_context(Redis.from_url(redis_server.url))
        pause_key = f"wem-der:quota:{{{KEY}}}:pause"
        while not await redis.exists(pause_key):  # bounded by the timeout above
            await asyncio.sleep(0.001)
        await b.acquire()
        waited_s = time.monotonic() - started
        await retry
    assert waited_s >= 0.45
    assert b.limit < 20


async def test_max_share_caps_a_job_through_redis(redis_server: RedisServer) -> None:
    """--max-share 0.25 of 40 a second: that job never holds over 10 starts of a second,
    and the other takes the rest."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        shares = {"capped": 0.25, "free": None}
        limiters = await redis_limiters(stack, redis_server.url, shares, count=40)
        until = time.monotonic() + 2.5
        starts = await run_jobs(time.monotonic, limiters, until=until)
    assert grants_in_windows(starts["capped"], 1.0) == 10
    assert grants_in_windows(sorted(starts["capped"] + starts["free"]), 1.0) == 40


async def test_a_redis_lost_and_back_empty_holds_the_workers_a_window(
    redis_server: RedisServer,
) -> None:
    """While Redis is down no start is granted; when it is back without the log, a full
    window passes before the next start, as if the period before had been full."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        job = (await redis_limiters(stack, redis_server.url, {"job": None}))["job"]
        await job.acquire()
        redis_server.stop()
        waiter = asyncio.create_task(job.acquire())
        await asyncio.sleep(OUTAGE_S)
        assert not waiter.done()
        redis_server.start()
        back = time.monotonic()
        await waiter
        granted_after_s = time.monotonic() - back
    assert granted_after_s >= 1.0  # the window: period 1 s plus the 0.1 s margin, less slack
    assert job.granted == 2


async def test_a_redis_lost_for_good_stops_the_run_resumably(redis_server: RedisServer) -> None:
    """Past the time allowed, a lost store ends the wait with QuotaStoreLost (a RunAborted:
    exit 3), naming the store and `wem-der resume`; every worker gets it."""
    async with asyncio.timeout(30), AsyncExitStack() as stack:
        limiters = await redis_limiters(stack, redis_server.url, {"job": None}, wait_s=OUTAGE_S)
        job = limiters["job"]
        redis_server.stop()
        waiters = [asyncio.create_task(job.acquire()) for _ in range(3)]
        done = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(error, QuotaStoreLost) for error in done)
    assert redis_server.url in str(done[0])
    assert "wem-der resume" in str(done[0])
    assert job.granted == 0


async def test_an_unreachable_store_is_refused_by_its_url_without_the_password() -> None:
    """No Redis at the URL: a ConfigError (exit 2) that names it, password left out."""
    url = f"redis://:pa55word@127.0.0.1:{free_port()}/0"
    log = RedisLog(url, key=KEY, owner="job", clock=time.monotonic, sleep=asyncio.sleep)
    with pytest.raises(ConfigError) as refused:
        async with log:
            pass
    assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in str(refused.value)
    assert "pa55word" not in str(refused.value)
