"""One request as every request of a run is sent: the token, then the quota, then the wire.

    Attempts.send --token()--> acquire() --token()--> ApiClient.send: one attempt, counted

A write and a read of the register take the same quota and the same token, so what one
costs is what the other costs: the server counts attempts, whatever they are for
(docs/aemo-contract.md, "Limits and quota"). Deciding what an answer means and whether to
try again is the caller's; a 429 it sees goes to `throttled`, which pauses every caller.
"""

from __future__ import annotations

from datetime import UTC, datetime

from wem_der.send.answers import Counters
from wem_der.send.auth import TokenProvider
from wem_der.send.body import ApiAnswer, EncodedBody
from wem_der.send.client import ApiClient
from wem_der.send.quota import QuotaLimiter
from wem_der.send.retry import RETRYABLE_EXCEPTIONS, RetryPolicy, parse_retry_after


class Attempts:
    """Sends single attempts granted by the run's quota, with a valid token, and counts them."""

    def __init__(
        self,
        *,
        client: ApiClient,
        tokens: TokenProvider,
        limiter: QuotaLimiter,
        policy: RetryPolicy,
        counters: Counters | None = None,
    ) -> None:
        self.tokens = tokens
        self.counters = counters or Counters()
        self._client = client
        self._limiter = limiter
        self._policy = policy

    async def send(self, method: str, url: str, body: EncodedBody | None) -> tuple[ApiAnswer, str]:
        """One attempt and the token it carried; transport failures raised, and counted."""
        # A refresh due now happens before the grant, not between the grant and the send.
        await self.tokens.token()
        await self._limiter.acquire()
        # A quota wait or a Retry-After pause can outlast the token's refresh margin: ask
        # again, which costs nothing while it is fresh, rather than send it expired and
        # spend a request on the 401.
        token = await self.tokens.token()
        self.counters.requests += 1
        try:
            answer = await self._client.send(method, url, body, token=token)
        except RETRYABLE_EXCEPTIONS:
            self.counters.saw(None)
            raise
        self.counters.saw(answer.status)
        if answer.status == 429:
            self.counters.http_429 += 1
        return answer, token

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
