"""The simulator's OAuth token endpoint and its documented quirks."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.testing import SimClient, connected

SETTINGS = SimulatorSettings(client_secret=SecretStr("s3cret"), token_lifetime_s=1800)
GRANT = "?grant_type=client_credentials"


def basic(client_id: str, secret: str) -> dict[str, str]:
    pair = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


def client_basic() -> dict[str, str]:
    return basic("local-client", "s3cret")


@pytest.fixture
async def client() -> AsyncIterator[SimClient]:
    async with connected(SETTINGS, token=False) as c:
        yield c


async def test_token_has_aemo_misspelt_key_and_string_lifetime(client: SimClient) -> None:
    """Success body: transactionID, acess_token, lifetime - 1 as a string."""
    async with asyncio.timeout(10):
        answer = await client.send("POST", client.sim.token_url + GRANT, headers=client_basic())
        assert answer.status == 200
        assert set(answer.body) == {"transactionID", "acess_token", "access_token_expires_in"}
        assert answer.body["access_token_expires_in"] == "1799"
        assert len(answer.body["acess_token"]) >= 20
        assert client.sim.stats()["tokens_issued"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        basic("local-client", "wrong"),
        basic("other-client", "s3cret"),
        {},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer abc"},
    ],
    ids=["wrong-secret", "wrong-id", "missing", "garbled", "not-basic"],
)
async def test_bad_credentials_get_flat_401(client: SimClient, headers: dict[str, str]) -> None:
    """Wrong or missing credentials: AEMO's flat 401 body, no token."""
    async with asyncio.timeout(10):
        answer = await client.send("POST", client.sim.token_url + GRANT, headers=headers)
        assert answer.status == 401
        assert answer.body == {
            "code": 401,
            "title": "Unauthorized",
            "detail": "Authorization failed",
            "source": "API Gateway",
        }
        assert client.sim.stats()["tokens_issued"] == 0


async def test_wrong_method_gets_flat_405(client: SimClient) -> None:
    """GET on the token endpoint: flat 405 naming the method."""
    async with asyncio.timeout(10):
        answer = await client.send("GET", client.sim.token_url + GRANT, headers=client_basic())
        assert answer.status == 405
        assert answer.body["code"] == 405
        assert "GET" in answer.body["detail"]
        assert "[POST]" in answer.body["detail"]


@pytest.mark.parametrize("query", ["", "?grant_type=password"], ids=["missing", "wrong"])
async def test_grant_type_missing_or_wrong_is_400(client: SimClient, query: str) -> None:
    """grant_type must be client_credentials."""
    async with asyncio.timeout(10):
        answer = await client.send("POST", client.sim.token_url + query, headers=client_basic())
        assert answer.status == 400
        assert "client_credentials" in answer.body["detail"]


async def test_grant_type_in_form_body_is_accepted(client: SimClient) -> None:
    """grant_type may also come in a form body, as OAuth clients often send it."""
    async with asyncio.timeout(10):
        headers = {**client_basic(), "Content-Type": "application/x-www-form-urlencoded"}
        answer = await client.send(
            "POST", client.sim.token_url, data=b"grant_type=client_credentials", headers=headers
        )
        assert answer.status == 200
        assert "acess_token" in answer.body


async def test_open_mode_accepts_any_secret_for_the_client_id() -> None:
    """Without a configured secret any secret works, but the client id must match."""
    async with asyncio.timeout(10), connected(SimulatorSettings(), token=False) as client:
        url = client.sim.token_url + GRANT
        ok = await client.send("POST", url, headers=basic("local-client", "anything"))
        assert ok.status == 200
        refused = await client.send("POST", url, headers=basic("someone-else", "anything"))
        assert refused.status == 401


async def test_unknown_oauth_path_is_flat_404(client: SimClient) -> None:
    """An unknown path under /oauth/v1 answers in the OAuth API's flat shape."""
    async with asyncio.timeout(10):
        answer = await client.send("POST", client.sim.oauth_url + "/tokens", headers=client_basic())
        assert answer.status == 404
        assert answer.body["code"] == 404


async def test_token_requests_are_not_under_the_der_quota(client: SimClient) -> None:
    """OAuth calls are counted per endpoint but not by the DER quota."""
    async with asyncio.timeout(10):
        for _ in range(3):
            await client.fetch_token()
        stats = client.sim.stats()
        assert stats["der_requests_received"] == 0
        assert stats["requests"]["oauth.token"] == {"200": 3}
