"""auth: AEMO's token quirks, caching, refresh ahead of expiry, single-flight, failures."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs
from wem_der.errors import CredentialsRefused, Misconfigured, RunAborted
from wem_der.send.auth import TokenProvider
from wem_der.send.retry import TokenUnavailable
from wem_der.testing import VirtualClock

from tests.scripted import Reply, Scripted

SECRET = "s3cr3t-VALUE-never-shown"
BASIC = base64.b64encode(f"client-1:{SECRET}".encode()).decode()


def token_reply(token: str = "tok-1", expires_in: object = "3599") -> Reply:
    return Reply(
        json={"transactionID": "t", "acess_token": token, "access_token_expires_in": expires_in}
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def clock() -> VirtualClock:
    """The provider's clock and sleep: its waits are listed in `clock.sleeps`."""
    return VirtualClock()


@pytest.fixture
def provider(
    server: Scripted, session: aiohttp.ClientSession, clock: VirtualClock
) -> TokenProvider:
    return TokenProvider(
        session=session,
        token_url=f"{server.url}/oauth/v1/token",
        client_id="client-1",
        client_secret=SecretStr(SECRET),
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )


@pytest.mark.parametrize(
    "body",
    [
        {"transactionID": "t", "acess_token": "tok-1", "access_token_expires_in": "3599"},
        {"access_token": "tok-1", "expires_in": 3599},
        {"access_token": "tok-1", "access_token_expires_in": 3599.5},
    ],
)
async def test_token_body_quirks_are_accepted(
    server: Scripted, provider: TokenProvider, body: dict[str, object]
) -> None:
    """Either token spelling and either expiry key, as string or number, give the token."""
    async with asyncio.timeout(10):
        server.script(Reply(json=body))
        assert await provider.token() == "tok-1"


async def test_token_request_matches_aemo(server: Scripted, provider: TokenProvider) -> None:
    """POST ?grant_type=client_credentials, Basic base64(id:secret), empty body, length 0."""
    async with asyncio.timeout(10):
        server.script(token_reply())
        await provider.token()
    [seen] = server.seen
    assert seen.method == "POST"
    assert seen.path == "/oauth/v1/token"
    assert seen.query == {"grant_type": "client_credentials"}
    assert seen.headers["Authorization"] == f"Basic {BASIC}"
    assert seen.headers["Content-Length"] == "0"
    assert seen.raw == b""


async def test_token_is_cached_and_refreshed_ahead_of_expiry(
    server: Scripted, provider: TokenProvider, clock: VirtualClock
) -> None:
    """Cached until refresh_margin_s before expiry, then refreshed once."""
    async with asyncio.timeout(10):
        server.script(token_reply("tok-1"), token_reply("tok-2"))
        assert await provider.token() == "tok-1"
        clock.jump(3599 - 120 - 1)
        assert await provider.token() == "tok-1"
        assert len(server.seen) == 1
        clock.jump(1)
        assert await provider.token() == "tok-2"
        assert await provider.token() == "tok-2"
    assert len(server.seen) == 2
    assert provider.refreshes == 2


async def test_short_lifetime_does_not_refresh_on_every_call(
    server: Scripted, provider: TokenProvider, clock: VirtualClock
) -> None:
    """A lifetime under the margin is kept for half its length, not refetched each call."""
    async with asyncio.timeout(10):
        server.script(token_reply("tok-1", expires_in=60))
        await provider.token()
        clock.jump(29)
        await provider.token()
    assert len(server.seen) == 1


async def test_missing_expiry_assumes_an_hour_and_warns(
    server: Scripted, provider: TokenProvider, clock: VirtualClock
) -> None:
    """No expiry: assume 3599 s, log a warning, and never log the token."""
    async with asyncio.timeout(10):
        server.script(Reply(json={"access_token": "tok-1"}))
        with capture_logs() as logs:
            await provider.token()
            clock.jump(3599 - 121)
            await provider.token()
    assert len(server.seen) == 1
    events = [entry["event"] for entry in logs]
    assert events == ["auth.expiry_missing", "auth.token_refreshed"]
    assert logs[1]["lifetime_s"] == 3599.0
    assert "tok-1" not in repr(logs)


async def test_fifty_concurrent_callers_cause_one_request(
    server: Scripted, provider: TokenProvider
) -> None:
    """Single-flight: 50 tasks asking at once share one token request."""
    async with asyncio.timeout(10):
        server.script(token_reply("tok-1"))
        tokens = await asyncio.gather(*(provider.token() for _ in range(50)))
    assert set(tokens) == {"tok-1"}
    assert len(server.seen) == 1


async def test_fifty_invalidations_of_one_token_cause_one_refresh(
    server: Scripted, provider: TokenProvider
) -> None:
    """50 workers seeing 401 with the same token trigger exactly one refresh."""
    async with asyncio.timeout(10):
        server.script(token_reply("tok-1"), token_reply("tok-2"), token_reply("tok-3"))
        old = await provider.token()

        async def saw_401() -> str:
            provider.invalidate(old)
            return await provider.token()

        # 25 see their 401 while the refresh is in flight, 25 only after it has landed.
        tokens = await asyncio.gather(*(saw_401() for _ in range(25)))
        tokens += await asyncio.gather(*(saw_401() for _ in range(25)))
    assert tokens == ["tok-2"] * 50
    assert len(server.seen) == 2
    assert provider.refreshes == 2


async def test_invalidating_a_stale_token_is_a_no_op(
    server: Scripted, provider: TokenProvider
) -> None:
    """A 401 seen with an already-replaced token does not refresh again."""
    async with asyncio.timeout(10):
        server.script(token_reply("tok-1"), token_reply("tok-2"), token_reply("tok-3"))
        await provider.token()
        provider.invalidate("tok-1")
        assert await provider.token() == "tok-2"
        provider.invalidate("tok-1")
        assert await provider.token() == "tok-2"
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    "reply",
    [
        Reply(401, json={"code": 401, "title": "Unauthorized", "detail": "Authorization failed"}),
        Reply(403, json={"transactionId": "t", "errors": [{"code": "403", "title": "Forbidden"}]}),
        Reply(400, json={"error": "invalid_client"}),
    ],
)
async def test_refused_credentials(
    server: Scripted, provider: TokenProvider, clock: VirtualClock, reply: Reply
) -> None:
    """401/403/invalid_client: CredentialsRefused at once, saying what to check, no secret."""
    async with asyncio.timeout(10):
        server.script(reply)
        with pytest.raises(CredentialsRefused) as caught:
            await provider.token()
        # Asking again does not hit the endpoint with refused credentials.
        with pytest.raises(CredentialsRefused):
            await provider.token()
    assert len(server.seen) == 1
    assert clock.sleeps == []
    message = str(caught.value)
    assert "client id 'client-1'" in message
    assert "client secret" in message
    assert server.url in message
    for shown in (message, repr(caught.value), repr(provider)):
        assert SECRET not in shown
        assert BASIC not in shown


async def test_echoed_secret_is_redacted(server: Scripted, provider: TokenProvider) -> None:
    """A gateway that echoes the credentials in its error does not leak them into ours."""
    async with asyncio.timeout(10):
        server.script(Reply(401, json={"code": 401, "title": "No", "detail": f"{BASIC}/{SECRET}"}))
        with pytest.raises(CredentialsRefused) as caught:
            await provider.token()
    assert "***/***" in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_repr_hides_token_and_secret(server: Scripted, provider: TokenProvider) -> None:
    """Neither the token nor the secret appears in the provider's repr."""
    async with asyncio.timeout(10):
        server.script(token_reply("tok-visible?"))
        await provider.token()
    assert "client-1" in repr(provider)
    assert "tok-visible?" not in repr(provider)
    assert SECRET not in repr(provider)
    assert BASIC not in repr(provider)


async def test_transient_failures_retry_with_jitter(
    server: Scripted, provider: TokenProvider, clock: VirtualClock
) -> None:
    """503, 429 and a dropped connection are retried after jittered sleeps."""
    async with asyncio.timeout(10):
        server.script(Reply(503), Reply(429), Reply(drop=True), token_reply("tok-1"))
        with capture_logs() as logs:
            assert await provider.token() == "tok-1"
    assert len(server.seen) == 4
    assert len(clock.sleeps) == 3
    for attempt, delay in enumerate(clock.sleeps, start=1):
        assert 0.0 <= delay <= 2 ** (attempt - 1)
    assert [e["event"] for e in logs].count("auth.retry_scheduled") == 3


async def test_exhausted_retries_leave_the_outage_to_the_run(
    server: Scripted, provider: TokenProvider, clock: VirtualClock
) -> None:
    """max_attempts transient failures raise TokenUnavailable, a failure the run's breaker
    rides out, not an abort; and it is not remembered: the next call asks again."""
    async with asyncio.timeout(10):
        server.script(*[Reply(503, body=b"<html>down</html>")] * 4, token_reply())
        with pytest.raises(TokenUnavailable) as caught:
            await provider.token()
        assert not isinstance(caught.value, RunAborted)
        assert "4 times" in str(caught.value)
        assert "HTTP 503" in str(caught.value)
        assert len(server.seen) == 4
        assert len(clock.sleeps) == 3
        assert await provider.token() == "tok-1"
    assert len(server.seen) == 5


async def test_unreachable_endpoint_is_unavailable(
    session: aiohttp.ClientSession, clock: VirtualClock, unused_tcp_port: int
) -> None:
    """Connection refused on every attempt ends in TokenUnavailable naming the URL."""
    url = f"http://127.0.0.1:{unused_tcp_port}/token"
    provider = TokenProvider(
        session=session,
        token_url=url,
        client_id="c",
        client_secret=SecretStr(SECRET),
        max_attempts=2,
        clock=clock,
        sleep=clock.sleep,
    )
    async with asyncio.timeout(10):
        with pytest.raises(TokenUnavailable, match="failed 2 times") as caught:
            await provider.token()
    assert url in str(caught.value)
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize(
    "reply",
    [Reply(404, json={"code": 404, "title": "Not found"}), Reply(200, json={"nothing": 1})],
)
async def test_wrong_endpoint_is_misconfigured(
    server: Scripted, provider: TokenProvider, reply: Reply
) -> None:
    """A 404, or a 200 without a token, says the token URL is wrong, without retrying."""
    async with asyncio.timeout(10):
        server.script(reply)
        with pytest.raises(Misconfigured, match="check the token URL"):
            await provider.token()
    assert len(server.seen) == 1


async def test_token_request_bypasses_session_middleware(server: Scripted) -> None:
    """The token request skips the session's middlewares (a token middleware would recurse)."""
    calls: list[str] = []

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        calls.append(str(request.url))
        return await handler(request)

    async with asyncio.timeout(10), aiohttp.ClientSession(middlewares=(middleware,)) as session:
        provider = TokenProvider(
            session=session,
            token_url=f"{server.url}/token",
            client_id="c",
            client_secret=SecretStr(SECRET),
        )
        server.script(token_reply())
        await provider.token()
        async with session.get(f"{server.url}/other") as response:
            await response.read()
    assert calls == [f"{server.url}/other"]
