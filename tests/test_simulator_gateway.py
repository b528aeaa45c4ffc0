"""What every DER request meets before its handler: token, headers, routing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from wem_der.simulator import FaultProfile, SimulatorSettings
from wem_der.simulator.testing import SimClient, connected, expect_error, sample_installation
from wem_der.testing import VirtualClock

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"), token_lifetime_s=100)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def client(clock: VirtualClock) -> AsyncIterator[SimClient]:
    async with connected(SETTINGS, clock=clock) as c:
        yield c


def get_url(client: SimClient, nmi: str = "6001000001") -> str:
    return f"{client.sim.installation_url}/installation/{nmi}"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Basic abc", "Bearer "],
    ids=["missing", "unknown", "wrong-scheme", "empty"],
)
async def test_bad_bearer_token_is_401(client: SimClient, authorization: str | None) -> None:
    """A missing or unknown token: 401 in the DER envelope."""
    async with asyncio.timeout(10):
        headers = client.headers()
        del headers["Authorization"]
        if authorization is not None:
            headers["Authorization"] = authorization
        answer = await client.send("GET", get_url(client), headers=headers)
        error = expect_error(answer, 401, "401")
        assert error["detail"] == "Authorization failed"


async def test_token_expires_on_the_injected_clock(client: SimClient, clock: VirtualClock) -> None:
    """A token works until lifetime_s after issue, and not from then on."""
    async with asyncio.timeout(10):
        clock.jump(99.75)
        assert (await client.call("GET", get_url(client))).status == 404  # authorised
        clock.jump(0.25)
        expect_error(await client.call("GET", get_url(client)), 401, "401")
        await client.fetch_token()
        assert (await client.call("GET", get_url(client))).status == 404


async def test_revocation_invalidates_only_earlier_tokens() -> None:
    """At a revocation time, tokens issued before it stop working; new ones work."""
    clock = VirtualClock()
    settings = SETTINGS.model_copy(update={"faults": FaultProfile(revoke_tokens_at_s=(10.0,))})
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        clock.jump(9.75)
        assert (await client.call("GET", get_url(client))).status == 404
        clock.jump(0.25)
        expect_error(await client.call("GET", get_url(client)), 401, "401")
        await client.fetch_token()
        assert (await client.call("GET", get_url(client))).status == 404


@pytest.mark.parametrize("header", ["X-initiatingParticipantID", "X-market"])
async def test_missing_required_header_is_400(client: SimClient, header: str) -> None:
    """Both AEMO headers are required."""
    async with asyncio.timeout(10):
        headers = client.headers()
        del headers[header]
        answer = await client.send("GET", get_url(client), headers=headers)
        assert header in expect_error(answer, 400, "400")["detail"]


async def test_wrong_market_is_400(client: SimClient) -> None:
    """X-market must be WEM."""
    async with asyncio.timeout(10):
        answer = await client.call("GET", get_url(client), headers={"X-market": "NEM"})
        assert "WEM" in expect_error(answer, 400, "400")["detail"]


async def test_participant_outside_allow_list_is_403() -> None:
    """With an allow-list, another participant gets 403 Insufficient privileges."""
    settings = SETTINGS.model_copy(update={"allowed_participants": frozenset({"OTHER"})})
    async with asyncio.timeout(10), connected(settings) as client:
        error = expect_error(await client.call("GET", get_url(client)), 403, "403")
        assert error["detail"] == "Insufficient privileges"
        allowed = await client.call(
            "GET", get_url(client), headers={"X-initiatingParticipantID": "OTHER"}
        )
        assert allowed.status == 404


async def test_unknown_path_is_404(client: SimClient) -> None:
    """A path that is no operation: 404 in the envelope, counted as unmatched."""
    async with asyncio.timeout(10):
        answer = await client.call("GET", client.sim.installation_url + "/installations")
        expect_error(answer, 404, "404")
        assert client.sim.stats()["requests"]["unmatched"] == {"404": 1}


async def test_unknown_nmi_is_404_id_not_found(client: SimClient) -> None:
    """GET and PUT of an NMI without an installation: 404 ID not found."""
    async with asyncio.timeout(10):
        assert expect_error(await client.call("GET", get_url(client)), 404, "404")["detail"] == (
            "ID not found"
        )
        update = await client.update(sample_installation())
        assert expect_error(update, 404, "404")["detail"] == "ID not found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/installation/6001000001"),
        ("PATCH", "/installation"),
        ("POST", "/installation/X"),
    ],
)
async def test_wrong_method_on_known_path_is_405(client: SimClient, method: str, path: str) -> None:
    """405 with AEMO's detail: Invalid method <method> for path <path>."""
    async with asyncio.timeout(10):
        answer = await client.call(method, client.sim.installation_url + path)
        error = expect_error(answer, 405, "405")
        assert error["detail"] == f"Invalid method {method} for path /v2/der-register{path}"


async def test_sim_endpoints_need_no_token_and_are_not_counted(client: SimClient) -> None:
    """/_sim/stats works without headers and does not count toward the quota."""
    async with asyncio.timeout(10):
        answer = await client.send("GET", client.sim.base_url + "/_sim/stats")
        assert answer.status == 200
        assert answer.body["der_requests_received"] == 0
        missing = await client.send("GET", client.sim.base_url + "/_sim/nothing")
        assert missing.status == 404
