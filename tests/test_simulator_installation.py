"""Installation API v2: create, update, get, history and the business rules."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.testing import SimClient, connected, expect_error, sample_installation

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"))
SERVER_FIELDS = {"connectionId", "installationStage", "recordCreationDate", "recordUpdateDate"}


@pytest.fixture
async def client() -> AsyncIterator[SimClient]:
    async with connected(SETTINGS) as c:
        yield c


async def test_create_returns_stored_record_with_server_fields(client: SimClient) -> None:
    """200 with transactionId, the record plus ids, dates and Confirmed stages, no exceptions."""
    async with asyncio.timeout(10):
        answer = await client.create(sample_installation())
        assert answer.status == 200
        assert answer.body["transactionId"]
        assert answer.body["exceptions"] == []
        data = answer.body["data"]
        assert data["nmi"] == "6001000001"
        assert data["recordCreationDate"] == data["recordUpdateDate"]
        [conn] = data["acConnections"]
        assert set(conn) >= SERVER_FIELDS
        assert conn["installationStage"] == "Confirmed"
        assert conn["recordConfirmedDate"] == data["recordCreationDate"]
        [device] = conn["devices"]
        assert isinstance(device["deviceId"], int)
        assert device["installationStage"] == "Confirmed"
        assert client.sim.store.installation("6001000001") is not None


async def test_create_status_is_configurable() -> None:
    """create_status=201 answers creates with 201."""
    settings = SETTINGS.model_copy(update={"create_status": 201})
    async with asyncio.timeout(10), connected(settings) as client:
        assert (await client.create(sample_installation())).status == 201


async def test_create_for_existing_nmi_is_422_and_counted(client: SimClient) -> None:
    """A second create for the same NMI: 422 code 1001, nothing replaced, counted."""
    async with asyncio.timeout(10):
        assert (await client.create(sample_installation())).status == 200
        again = await client.create(sample_installation(jobNumber="JOB-2"))
        error = expect_error(again, 422, "1001")
        assert "6001000001" in error["detail"]
        assert client.sim.store.installation("6001000001").record["jobNumber"] == "JOB-1"  # type: ignore[union-attr]
        stats = client.sim.stats()
        assert stats["creates_refused_existing"] == 1
        assert stats["duplicate_creates"] == 0
        assert stats["installation_versions"] == 1


def future_date(record: dict[str, Any]) -> None:
    record["acConnections"][0]["commissioningDate"] = "2999-01-01"


def negative_capacity(record: dict[str, Any]) -> None:
    record["approvedCapacity"] = -1


def too_many_phases(record: dict[str, Any]) -> None:
    record["installedPhasesCount"] = 4


def no_devices(record: dict[str, Any]) -> None:
    record["acConnections"][0]["devices"] = []


@pytest.mark.parametrize(
    ("breach", "code", "fragment"),
    [
        (future_date, "1010", "acConnections[0].commissioningDate is 2999-01-01"),
        (negative_capacity, "1011", "approvedCapacity is -1"),
        (too_many_phases, "1012", "installedPhasesCount 4"),
        (no_devices, "1013", "acConnections[0].devices"),
    ],
    ids=["future-date", "negative-capacity", "phases", "no-devices"],
)
async def test_first_level_rules_are_422(
    client: SimClient, breach: Any, code: str, fragment: str
) -> None:
    """Each first-level rule refuses the record with its code; nothing is stored."""
    async with asyncio.timeout(10):
        record = sample_installation()
        breach(record)
        error = expect_error(await client.create(record), 422, code)
        assert fragment in error["detail"]
        assert client.sim.store.installation("6001000001") is None


async def test_require_nmi_first() -> None:
    """With require_nmi_first, an installation needs its NMI record: 1002 until it exists."""
    settings = SETTINGS.model_copy(update={"require_nmi_first": True})
    async with asyncio.timeout(10), connected(settings) as client:
        expect_error(await client.create(sample_installation()), 422, "1002")
        nmi = {"nmi": "6001000001", "postCode": "6000", "status": "Active"}
        assert (await client.call("POST", client.sim.nmi_url + "/nmi-details", nmi)).status == 200
        assert (await client.create(sample_installation())).status == 200


async def test_nmi_first_is_off_by_default(client: SimClient) -> None:
    """By default an installation may come before its NMI record."""
    async with asyncio.timeout(10):
        assert (await client.create(sample_installation())).status == 200


async def test_second_level_exceptions_make_affected_parts_conditional(client: SimClient) -> None:
    """2023 and 2040: accepted and stored, exceptions listed, only affected parts Conditional."""
    async with asyncio.timeout(10):
        record = sample_installation()
        second = copy.deepcopy(record["acConnections"][0])
        second["nspConnectionId"] = "C2"
        second["details"] = {"manufacturerName": "Simulated Solar", "modelNumber": "SS-0000"}
        record["acConnections"].append(second)
        record["acConnections"][0]["devices"][0]["details"]["nominalRatedCapacity"] = 9
        answer = await client.create(record)
        assert answer.status == 200
        conn0, conn1 = answer.body["data"]["acConnections"]
        codes = {e["code"]: e for e in answer.body["exceptions"]}
        assert set(codes) == {"2023", "2040"}
        assert codes["2023"]["connectionId"] == conn1["connectionId"]
        assert codes["2023"]["deviceId"] is None
        assert codes["2040"]["deviceId"] == conn0["devices"][0]["deviceId"]
        assert codes["2040"]["affectedAttributes"][0] == (
            "acConnections[0].devices[0].details.nominalRatedCapacity"
        )
        assert set(codes["2040"]) == {
            "exceptionId",
            "code",
            "name",
            "affectedAttributes",
            "details",
            "status",
            "deviceId",
            "connectionId",
        }
        assert conn0["installationStage"] == "Confirmed"
        assert conn0["devices"][0]["installationStage"] == "Conditional"
        assert conn1["installationStage"] == "Conditional"
        assert conn1["recordConfirmedDate"] is None
        assert conn1["devices"][0]["installationStage"] == "Confirmed"
        stored = client.sim.store.installation("6001000001")
        assert stored is not None
        assert len(stored.exceptions) == 2


async def test_installation_wide_exception_marks_every_connection(client: SimClient) -> None:
    """2024 (export limit above approved capacity) makes every connection Conditional."""
    async with asyncio.timeout(10):
        answer = await client.create(sample_installation(exportLimitkW=11))
        [exception] = answer.body["exceptions"]
        assert exception["code"] == "2024"
        assert exception["connectionId"] is None
        assert answer.body["data"]["acConnections"][0]["installationStage"] == "Conditional"


async def test_update_keeps_ids_and_history(client: SimClient) -> None:
    """PUT replaces the record, keeps matched ids, numbers new parts, keeps history."""
    async with asyncio.timeout(10):
        created = (await client.create(sample_installation())).body["data"]
        record = sample_installation(jobNumber="JOB-2")
        extra = copy.deepcopy(record["acConnections"][0])
        extra["nspConnectionId"] = "C9"
        record["acConnections"].insert(0, extra)
        answer = await client.update(record)
        assert answer.status == 200
        new, kept = answer.body["data"]["acConnections"]
        old_id = created["acConnections"][0]["connectionId"]
        assert kept["connectionId"] == old_id
        assert new["connectionId"] not in {old_id}
        assert (
            kept["devices"][0]["deviceId"] == created["acConnections"][0]["devices"][0]["deviceId"]
        )
        assert answer.body["data"]["recordCreationDate"] == created["recordCreationDate"]

        current = await client.call("GET", f"{client.sim.installation_url}/installation/6001000001")
        assert current.body["data"]["jobNumber"] == "JOB-2"
        history = await client.call(
            "GET", f"{client.sim.installation_url}/installation/6001000001/history"
        )
        assert [v["jobNumber"] for v in history.body["data"]] == ["JOB-1", "JOB-2"]
        first, second = history.body["data"]
        assert first["recordEndDate"] == second["recordStartDate"]
        assert second["recordEndDate"] is None


async def test_update_with_mismatched_nmi_is_400(client: SimClient) -> None:
    """The NMI in the body must be the one in the path."""
    async with asyncio.timeout(10):
        await client.create(sample_installation())
        url = f"{client.sim.installation_url}/installation/6001000001"
        answer = await client.call("PUT", url, {"data": sample_installation("6001000002")})
        assert "does not match" in expect_error(answer, 400, "400")["detail"]


async def test_update_applies_rules(client: SimClient) -> None:
    """First-level rules apply to updates too, and leave the stored record alone."""
    async with asyncio.timeout(10):
        await client.create(sample_installation())
        expect_error(await client.update(sample_installation(approvedCapacity=-5)), 422, "1011")
        assert client.sim.stats()["installation_versions"] == 1


async def test_history_of_unknown_nmi_is_404(client: SimClient) -> None:
    """No installation, no history."""
    async with asyncio.timeout(10):
        url = f"{client.sim.installation_url}/installation/6001000009/history"
        expect_error(await client.call("GET", url), 404, "404")


async def test_rules_file_can_switch_a_rule_off(client: SimClient, tmp_path: Path) -> None:
    """With installation_exists off, a second create replaces and counts as a duplicate."""
    bundled = Path(__file__).parents[1] / "pipeline/wem_der/simulator/data/rules.toml"
    text = bundled.read_text().replace('code = "1001"', 'code = "1001"\nenabled = false', 1)
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    settings = SETTINGS.model_copy(update={"rules_file": rules})
    async with asyncio.timeout(10), connected(settings) as lax:
        assert (await lax.create(sample_installation())).status == 200
        assert (await lax.create(sample_installation())).status == 200
        assert lax.sim.stats()["duplicate_creates"] == 1
        assert lax.sim.stats()["creates_refused_existing"] == 0
