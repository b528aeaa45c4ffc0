"""NMI API v1: unwrapped bodies, create / get / update."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.testing import SimClient, connected, expect_error

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"))
NMI = {
    "nmi": "6001000001",
    "substation": "SUB",
    "postCode": "6000",
    "tni": "T1",
    "status": "Active",
}


@pytest.fixture
async def client() -> AsyncIterator[SimClient]:
    async with connected(SETTINGS) as c:
        yield c


def nmis(client: SimClient, nmi: str = "") -> str:
    return client.sim.nmi_url + "/nmi-details" + (f"/{nmi}" if nmi else "")


async def test_create_get_update(client: SimClient) -> None:
    """An NMI record is created unwrapped, read back and replaced, with record dates."""
    async with asyncio.timeout(10):
        created = await client.call("POST", nmis(client), NMI)
        assert created.status == 200
        assert created.body["transactionId"]
        assert created.body["data"]["substation"] == "SUB"
        assert "recordCreationDate" in created.body["data"]
        got = await client.call("GET", nmis(client, "6001000001"))
        assert got.body["data"] == created.body["data"]
        updated = await client.call(
            "PUT", nmis(client, "6001000001"), {**NMI, "status": "Inactive"}
        )
        assert updated.status == 200
        assert updated.body["data"]["status"] == "Inactive"
        assert (
            updated.body["data"]["recordCreationDate"] == created.body["data"]["recordCreationDate"]
        )
        assert client.sim.stats()["nmi_records"] == 1


async def test_create_existing_nmi_is_422(client: SimClient) -> None:
    """A second create for the same NMI: 422 with the rule table's code."""
    async with asyncio.timeout(10):
        await client.call("POST", nmis(client), NMI)
        answer = await client.call("POST", nmis(client), NMI)
        assert "6001000001" in expect_error(answer, 422, "1003")["detail"]


async def test_wrapped_body_is_a_schema_error(client: SimClient) -> None:
    """The NMI body is not wrapped in `data`: a wrapped one fails the schema."""
    async with asyncio.timeout(10):
        answer = await client.call("POST", nmis(client), {"data": NMI})
        assert answer.status == 400
        details = [e["detail"] for e in answer.body["errors"]]
        assert "nmi: required field is missing" in details


async def test_bad_post_code_names_the_field(client: SimClient) -> None:
    """Schema failures in an NMI record name the field."""
    async with asyncio.timeout(10):
        answer = await client.call("POST", nmis(client), {**NMI, "postCode": "60"})
        assert expect_error(answer, 400, "1020")["detail"].startswith("postCode:")


async def test_unknown_nmi_is_404(client: SimClient) -> None:
    """GET and PUT of an unknown NMI record: 404 ID not found."""
    async with asyncio.timeout(10):
        expect_error(await client.call("GET", nmis(client, "6001000001")), 404, "404")
        answer = await client.call("PUT", nmis(client, "6001000001"), NMI)
        assert expect_error(answer, 404, "404")["detail"] == "ID not found"


async def test_update_with_mismatched_nmi_is_400(client: SimClient) -> None:
    """The body's NMI must be the path's."""
    async with asyncio.timeout(10):
        await client.call("POST", nmis(client), NMI)
        answer = await client.call("PUT", nmis(client, "6001000001"), {**NMI, "nmi": "6001000002"})
        expect_error(answer, 400, "400")
