"""The quota's log in Redis, for jobs on several hosts (`--quota-store redis://HOST:PORT/DB`).

Each grant is one Lua script, atomic on the server and timed by the server's clock
(`TIME`), never a host's: hosts whose clocks disagree still share one window. The log is a
sorted set of starts scored in microseconds, each member unique to its request (a random
token: two starts in one microsecond are two entries), beside a sorted set of this job's
own starts (for `--max-share`), the shared pause and a generation mark.

Needs Lua scripting with `TIME` followed by writes, so script effects replication: Redis
3.2 or newer (`redis.replicate_commands`, a no-op from Redis 7 on). The keys of one quota
share a hash tag, so a Redis Cluster keeps them on one node.

When Redis cannot be reached the limiter's workers wait (nothing leaves uncounted) while
one task reconnects with backoff; after `wait_s` the run stops resumably
(`QuotaStoreLost`). A Redis that comes back without the log (restarted, or failed over to
an empty replica; its generation mark is gone or another) is taken to have held a full
period: every job pauses for one window.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wem_der.errors import ConfigError, QuotaStoreLost
from wem_der.send.quota_store import Ask, Taken, shown_url

log = structlog.get_logger("wem_der.quota")

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_US = 1_000_000

# KEYS: the log, this job's own starts, the pause (its end, in µs), the generation mark.
# ARGV: window µs, limit, burst (0: none), burst window µs, share (0: none), pause µs to
#       set (0: none), this request's member, the generation this job last saw ("": none),
#       a new generation mark in case there is none.
# Returns {granted 1/0, wait µs, paused µs, generation}.
_GRANT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local log, own, pause, mark = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window = tonumber(ARGV[1])
local generation = redis.call('GET', mark)
local reset = false
if not generation then
    generation = ARGV[9]
    redis.call('SET', mark, generation)
    reset = ARGV[8] ~= ''
elseif ARGV[8] ~= '' and ARGV[8] ~= generation then
    reset = true
end
local pause_us = tonumber(ARGV[6])
if reset then pause_us = math.max(pause_us, window) end
local until_us = tonumber(redis.call('GET', pause) or '0')
if pause_us > 0 and now + pause_us > until_us then
    until_us = now + pause_us
    redis.call('SET', pause, string.format('%d', until_us), 'PX', math.ceil(pause_us / 1000) + 1)
end
if now < until_us then return {0, until_us - now, until_us - now, generation} end
redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', own, '-inf', now - window)
local wait = 0
local function fits(key, k, span)
    if k <= 0 then return end
    local nth = redis.call('ZREVRANGE', key, k - 1, k - 1, 'WITHSCORES')
    if nth[2] then
        local left = tonumber(nth[2]) + span - now
        if left > wait then wait = left end
    end
end
fits(log, tonumber(ARGV[2]), window)
fits(log, tonumber(ARGV[3]), tonumber(ARGV[4]))
fits(own, tonumber(ARGV[5]), window)
if wait > 0 then return {0, wait, 0, generation} end
redis.call('ZADD', log, now, ARGV[7])
redis.call('ZADD', own, now, ARGV[7])
local keep = math.ceil(window / 1000) + 1000
redis.call('PEXPIRE', log, keep)
redis.call('PEXPIRE', own, keep)
return {1, 0, 0, generation}
"""


class RedisLog:
    """The log of every job of the quota `key`, in the Redis at `url`; `async with` opens
    it, and refuses (ConfigError) a Redis that does not answer."""

    def __init__(
        self,
        url: str,
        *,
        key: str,
        owner: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        wait_s: float = 60.0,
        timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.url = url
        self.shown = shown_url(url)
        # One hash tag for all keys of a quota, so that a cluster keeps them together.
        prefix = f"wem-der:quota:{{{key}}}"
        self._keys = [f"{prefix}:log", f"{prefix}:job:{owner}", f"{prefix}:pause", f"{prefix}:gen"]
        self._clock = clock
        self._sleep = sleep
        self._wait_s = wait_s
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._generation = ""
        self._lost: QuotaStoreLost | None = None
        self._outage = 0  # outages ridden out so far: a waiter knows when one has ended
        self._reconnecting = asyncio.Lock()
        self._redis: Redis | None = None
        self._script: Any = None

    async def __aenter__(self) -> Self:
        # redis-py retries nothing itself: a lost Redis is this class's to ride out, and a
        # grant sent again after a lost answer could be recorded twice.
        redis = Redis.from_url(
            self.url,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            await redis.aclose()
            raise ConfigError(
                f"cannot reach the quota store {self.shown} ({type(exc).__name__}: {exc});"
                " start it, or give another --quota-store (WEMDER_QUOTA_STORE)"
            ) from None
        self._redis = redis
        self._script = redis.register_script(_GRANT)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def take(self, ask: Ask) -> Taken:
        while True:
            if self._lost is not None:
                raise self._lost
            outage = self._outage
            try:
                reply = await self._script(
                    keys=self._keys,
                    args=[
                        round(ask.window_s * _US),
                        ask.limit,
                        ask.burst or 0,
                        round(ask.burst_window_s * _US),
                        ask.share or 0,
                        round(ask.pause_s * _US),
                        secrets.token_hex(8),
                        self._generation,
                        secrets.token_hex(8),
                    ],
                )
            except _UNREACHABLE as exc:
                await self._ride_out(exc, outage)
                continue
            granted, wait_us, paused_us, generation = reply
            self._generation = generation.decode() if isinstance(generation, bytes) else generation
            if granted:
                return Taken(0.0)
            # At least a microsecond: the script counts in whole ones.
            return Taken(max(int(wait_us), 1) / _US, int(paused_us) / _US)

    async def _ride_out(self, exc: BaseException, outage: int) -> None:
        """Wait until Redis answers again, or declare it lost after `wait_s`."""
        async with self._reconnecting:
            if self._outage != outage or self._lost is not None:
                return  # another task rode this one out meanwhile
            redis = self._redis
            if redis is None:
                raise RuntimeError("RedisLog used outside `async with`")
            log.warning("quota.store_lost", store=self.shown, error=type(exc).__name__)
            started = self._clock()
            delay = self._backoff_s[0]
            while True:
                if self._clock() - started >= self._wait_s:
                    self._lost = QuotaStoreLost(self.shown, self._wait_s)
                    raise self._lost
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff_s[1])
                try:
                    await redis.ping()
                except _UNREACHABLE:
                    continue
                self._outage += 1
                log.warning(
                    "quota.store_back", store=self.shown, after_s=round(self._clock() - started, 3)
                )
                return
