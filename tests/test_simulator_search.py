"""GET /installation?...: filters, page sizes and pagination metadata."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.testing import SimClient, connected, expect_error, sample_installation

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"))


@pytest.fixture
async def client() -> AsyncIterator[SimClient]:
    async with connected(SETTINGS) as c:
        for k in range(30):
            record = sample_installation(f"60010000{k:02d}")
            conn = record["acConnections"][0]
            conn["commissioningDate"] = f"2024-01-{k + 1:02d}" if k < 28 else "2023-06-01"
            if k % 10 == 0:
                record["exportLimitkW"] = 50  # 2024: Conditional
            if k == 7:
                conn["equipmentType"] = "Battery Storage Inverter"
                conn["devices"][0]["type"] = "Storage"
            assert (await c.create(record)).status == 200
        yield c


async def find(client: SimClient, query: str) -> dict[str, object]:
    answer = await client.call("GET", f"{client.sim.installation_url}/installation?{query}")
    assert answer.status == 200, answer.body
    return answer.body  # type: ignore[no-any-return]


def nmis(body: dict[str, object]) -> list[str]:
    data = body["data"]
    assert isinstance(data, list)
    return [r["nmi"] for r in data]


async def test_pages_and_metadata(client: SimClient) -> None:
    """Results are ordered by NMI and paged, with page/pageSize/totalPages/totalRecords."""
    async with asyncio.timeout(10):
        first = await find(client, "installationStage=Confirmed")
        assert first["totalRecords"] == 27
        assert first["totalPages"] == 2
        assert first["pageSize"] == 25
        assert len(nmis(first)) == 25
        second = await find(client, "installationStage=Confirmed&page=2")
        assert nmis(second) == ["6001000028", "6001000029"]
        assert not set(nmis(first)) & set(nmis(second))
        past = await find(client, "installationStage=Confirmed&page=3")
        assert nmis(past) == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("nmi=6001000003,6001000001,6001000099", ["6001000001", "6001000003"]),
        ("installationStage=Conditional", ["6001000000", "6001000010", "6001000020"]),
        ("equipmentType=Battery%20Storage%20Inverter", ["6001000007"]),
        ("deviceType=Storage", ["6001000007"]),
        ("fromCommissioningDate=2024-01-27", ["6001000026", "6001000027"]),
        ("toCommissioningDate=2023-12-31", ["6001000028", "6001000029"]),
        (
            "fromCommissioningDate=2024-01-02&toCommissioningDate=2024-01-04",
            ["6001000001", "6001000002", "6001000003"],
        ),
        ("nmi=6001000010&installationStage=Confirmed", []),
    ],
)
async def test_filters(client: SimClient, query: str, expected: list[str]) -> None:
    """Each filter selects what it names; filters combine with AND."""
    async with asyncio.timeout(10):
        assert nmis(await find(client, query + "&pageSize=100")) == expected


@pytest.mark.parametrize(
    "query",
    [
        "",
        "page=1",
        "nmi=6001000001&pageSize=30",
        "nmi=6001000001&page=0",
        "nmi=6001000001&page=x",
        "installationStage=Pending",
        "fromCommissioningDate=2024-13-01",
        "fromCommissioningDate=20240101",
        "nmis=6001000001",
    ],
    ids=[
        "no-filter",
        "paging-only",
        "page-size",
        "page-zero",
        "page-text",
        "stage",
        "bad-date",
        "compact-date",
        "unknown-param",
    ],
)
async def test_bad_queries_are_400(client: SimClient, query: str) -> None:
    """At least one filter, pageSize 25/50/100, valid values, known parameters."""
    async with asyncio.timeout(10):
        answer = await client.call("GET", f"{client.sim.installation_url}/installation?{query}")
        expect_error(answer, 400, "400")
