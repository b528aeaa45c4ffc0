"""What the simulated register holds, set beside what was sent; and a reader of it in bulk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
from pydantic import SecretStr
from wem_der.config import Settings
from wem_der.records.shapes import SERVER_FIELDS
from wem_der.register.search import RegisterReader
from wem_der.send.answers import KnownRefusal
from wem_der.send.attempt import Attempts
from wem_der.send.auth import TokenProvider
from wem_der.send.client import ApiClient
from wem_der.send.quota import QuotaLimiter
from wem_der.send.retry import RetryPolicy
from wem_der.send.routes import Routes
from wem_der.simulator import Simulator


def unstamped(value: Any) -> Any:
    """A stored record without what the register adds to it (its server-maintained fields,
    the dates it stamps among them): what was sent, if all is well."""
    if isinstance(value, dict):
        return {k: unstamped(v) for k, v in value.items() if k not in SERVER_FIELDS}
    if isinstance(value, list):
        return [unstamped(v) for v in value]
    return value


@asynccontextmanager
async def reading(
    base_url: str,
    *,
    token_url: str,
    client_id: str = "local-client",
    secret: str = "s",
    batch_size: int = 100,
    page_size: int = 100,
    max_attempts: int = 3,
    limiter: QuotaLimiter | None = None,
) -> AsyncIterator[RegisterReader]:
    """A `RegisterReader` of the Installation API at `base_url`, with retries that never
    wait and the production quota unless `limiter` is given."""
    async with aiohttp.ClientSession() as session:
        tokens = TokenProvider(
            session=session,
            token_url=token_url,
            client_id=client_id,
            client_secret=SecretStr(secret),
        )
        attempts = Attempts(
            client=ApiClient(session=session, tokens=tokens, participant_id="TESTNSP"),
            tokens=tokens,
            limiter=limiter or QuotaLimiter(count=6000, period_s=60),
            policy=RetryPolicy(max_attempts=max_attempts, base_delay_s=0, max_delay_s=0),
        )
        yield RegisterReader(
            attempts=attempts,
            routes=Routes(base_url, base_url),
            record_missing=KnownRefusal.record_missing(Settings().record_missing_pattern),
            batch_size=batch_size,
            page_size=page_size,
        )


def sim_reader(sim: Simulator, **options: Any) -> AbstractAsyncContextManager[RegisterReader]:
    """`reading` the simulator `sim`, as its configured client."""
    secret = sim.settings.client_secret
    return reading(
        sim.installation_url,
        token_url=sim.token_url,
        client_id=sim.settings.client_id,
        secret=secret.get_secret_value() if secret else "s",
        **options,
    )
