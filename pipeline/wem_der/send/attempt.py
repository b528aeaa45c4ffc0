"""One request as every request of a run is sent: the token, then the quota, then the wire.

    Attempts.send --admit()--> token() --> acquire() --token()--> ApiClient.send: one
    attempt, counted, its answer or failure told to the breaker

A write and a read of the register take the same quota and the same token, so what one
costs is what the other costs: the server counts attempts, whatever they are for
(docs/aemo-contract.md, "Limits and quota"). The run's breaker (send/breaker.py) holds
every attempt while the register is down, but its probe. Deciding what an answer means
and whether to try again is the caller's; a 429 it sees goes to `throttled`, which pauses
every caller, and `next_delay` says how long to wait before the next attempt: an attempt
that met an outage costs its record nothing.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

from wem_der.send.answers import Counters
from wem_der.send.auth import TokenProvider
from wem_der.send.body import ApiAnswer, EncodedBody
from wem_der.send.breaker import Breaker
from wem_der.send.client import ApiClient
from wem_der.send.quota import QuotaLimiter
from wem_der.send.retry import (
    RETRYABLE_EXCEPTIONS,
    Budget,
    RetryPolicy,
    parse_retry_after,
)


class Attempts:
    """Sends single attempts granted by the run's quota and its breaker, with a valid
    token, and counts them. Without a breaker (`breaker` None), an outage is met by each
    record's own budget."""

    def __init__(
        self,
        *,
        client: ApiClient,
        tokens: TokenProvider,
        limiter: QuotaLimiter,
        policy: RetryPolicy,
        counters: Counters | None = None,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.counters = counters or Counters()
        self._client = client
        self._limiter = limiter
        self._policy = policy
        self._breaker = breaker
        self._clock = clock

    def budget(self) -> Budget:
        """A new retry budget for one record or one read: its time runs by the breaker's
        `uptime`, so that waiting out an outage spends none of it."""
        breaker = self._breaker
        return Budget(self._policy, clock=self._clock if breaker is None else breaker.uptime)

    def next_delay(
        self, budget: Budget, rng: random.Random, retry_after_s: float | None
    ) -> float | None:
        """The wait after a failed attempt (None: `budget` is spent). While the breaker is
        open the attempt met the outage: it costs nothing, and the next one waits in
        `send` for its turn."""
        if self._breaker is not None and self._breaker.is_open:
            return 0.0
        return budget.next_delay(rng, retry_after_s)

    async def send(
        self,
        method: str,
        url: str,
        body: EncodedBody | None,
        *,
        leaving: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[ApiAnswer, str]:
        """One attempt and the token it carried; transport failures raised, and counted.

        `leaving` is awaited once, when the quota has granted the attempt (a write records
        itself in the ledger there): an attempt that a stop or a kill -9 caught waiting
        for the quota, or for the register before its first grant, has nothing to read
        back.
        """
        probe = await self._granted(leaving)
        with self._told(probe):
            # A quota wait or a Retry-After pause can outlast the token's refresh margin:
            # ask again, which costs nothing while it is fresh, rather than send it expired
            # and spend a request on the 401.
            token = await self.tokens.token()
        self.counters.requests += 1
        try:
            with self._told(probe):
                answer = await self._client.send(method, url, body, token=token)
        except RETRYABLE_EXCEPTIONS:
            self.counters.saw(None)
            raise
        self.counters.saw(answer.status)
        if answer.status == 429:
            self.counters.http_429 += 1
        if self._breaker is not None:
            # Read only when sent: most answers carry none, and this runs for every request.
            retry_after = None if answer.retry_after is None else self.retry_after(answer)
            self._breaker.answered(answer.status, probe=probe, retry_after_s=retry_after)
        return answer, token

    async def _granted(self, leaving: Callable[[], Awaitable[None]] | None) -> bool:
        """Wait for the breaker and the quota; True when this attempt is the breaker's probe."""
        while True:
            probe = False if self._breaker is None else await self._breaker.admit()
            with self._told(probe):
                # A refresh due now happens before the grant, not between it and the send.
                await self.tokens.token()
                await self._limiter.acquire()
                if leaving is not None:
                    await leaving()
                    leaving = None
            # The register failed an attempt while this one waited for the quota or the
            # ledger: the grant goes unused (the quota counts it, which errs on the safe
            # side), and the attempt waits for its turn, so that what the quota lets go
            # together does not all meet an outage. Nothing else waits between here and
            # the wire.
            if probe or self._breaker is None or not self._breaker.holding:
                return probe

    @contextlib.contextmanager
    def _told(self, probe: bool) -> Iterator[None]:
        """The breaker told of a failure in the block: an outage met, or a probe ended
        without an answer (a stop), so that another attempt probes in its place."""
        try:
            yield
        except RETRYABLE_EXCEPTIONS as exc:
            if self._breaker is not None:
                self._breaker.failed(exc, probe=probe)
            raise
        except BaseException:
            if probe and self._breaker is not None:
                self._breaker.release()
            raise

    def retry_after(self, answer: ApiAnswer) -> float | None:
        """The answer's Retry-After in seconds (number or HTTP date), capped by the policy."""
        return parse_retry_after(
            answer.retry_after, now=datetime.now(UTC), cap_s=self._policy.retry_after_cap_s
        )

    def throttled(self, answer: ApiAnswer) -> float | None:
        """A 429 pauses every caller of the quota, not only this one, and lowers the rate;
        returns its Retry-After, if it gave one."""
        retry_after = self.retry_after(answer)
        self._limiter.throttled()
        self._limiter.pause_for(
            retry_after if retry_after is not None else self._policy.base_delay_s
        )
        return retry_after
