"""The simulator's side of bulk reads: the search's two answer shapes, a register filled
without requests, and updates that carry the register's ids."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, Literal

import pytest
from pydantic import SecretStr
from wem_der.records.samples import installations, nmi
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.envelope import ApiError
from wem_der.simulator.testing import SimClient, connected, prefill, sample_installation

from tests.register import unstamped


def settings(answer: Literal["envelope", "list"] = "envelope") -> SimulatorSettings:
    return SimulatorSettings(client_secret=SecretStr("s"), search_answer=answer)


async def search(client: SimClient, query: str) -> Any:
    answer = await client.call("GET", f"{client.sim.installation_url}/installation?{query}")
    assert answer.status == 200, answer.body
    return answer.body


async def test_the_search_answers_a_bare_list_or_an_envelope() -> None:
    """`search_answer` switches between the operation definition's bare list of records and
    the envelope with page counts; the same records either way."""
    bodies = {}
    for answer in ("list", "envelope"):
        async with asyncio.timeout(10), connected(settings(answer)) as client:
            prefill(client.sim.state, installations(30))
            bodies[answer] = await search(client, "installationStage=Confirmed&page=2")
    as_list, envelope = bodies["list"], bodies["envelope"]
    assert isinstance(as_list, list)
    assert [r["nmi"] for r in as_list] == [nmi(i) for i in range(25, 30)]
    assert envelope["data"] == as_list
    assert envelope["transactionId"]
    assert (envelope["page"], envelope["pageSize"], envelope["totalPages"]) == (2, 25, 2)
    assert envelope["totalRecords"] == 30


async def test_prefill_stores_as_a_request_would_without_one() -> None:
    """Each record is checked, stamped and judged by the rules; the quota and the request
    counters see nothing; an NMI held already gets a new version."""
    async with asyncio.timeout(10), connected(settings()) as client:
        flagged = sample_installation("6001000002", exportLimitkW=50)  # 2024: Conditional
        assert prefill(client.sim.state, [sample_installation(), flagged]) == 2
        assert prefill(client.sim.state, [sample_installation(jobNumber="JOB-2")]) == 1
        stats = client.sim.stats()
        assert stats["der_requests_received"] == 0
        assert (stats["installations"], stats["installation_versions"]) == (2, 3)
        current = client.sim.store.installation("6001000001")
        assert current is not None
        assert unstamped(current.record) == sample_installation(jobNumber="JOB-2")
        assert current.record["acConnections"][0]["connectionId"] == 1
        conditional = await search(client, "installationStage=Conditional")
        assert [r["nmi"] for r in conditional["data"]] == ["6001000002"]
        held = client.sim.store.installation("6001000002")
        assert held is not None
        assert [e["code"] for e in held.exceptions] == ["2024"]


async def test_prefill_refuses_what_a_request_could_not_store() -> None:
    """A record the register would refuse raises, and is not stored."""
    async with asyncio.timeout(10), connected(settings()) as client:
        with pytest.raises(ApiError):
            prefill(client.sim.state, [sample_installation(approvedCapacity="ten")])
        assert client.sim.stats()["installations"] == 0


async def test_an_update_may_carry_the_registers_ids() -> None:
    """A connection or device that carries a stored one's id updates that one, whatever its
    nspConnectionId; an id the register never gave is replaced by a new one. A create may
    carry none."""
    async with asyncio.timeout(10), connected(settings()) as client:
        created = (await client.create(sample_installation())).body["data"]
        connection_id = created["acConnections"][0]["connectionId"]
        device_id = created["acConnections"][0]["devices"][0]["deviceId"]
        record = sample_installation()
        connection = record["acConnections"][0]
        connection.update(nspConnectionId="C-RENAMED", connectionId=connection_id)
        connection["devices"][0].update(nspDeviceId="D-RENAMED", deviceId=device_id)
        unknown = copy.deepcopy(connection)
        unknown.update(nspConnectionId="C-NEW", connectionId=999)
        record["acConnections"].append(unknown)
        answer = await client.update(record)
        assert answer.status == 200, answer.body
        kept, added = answer.body["data"]["acConnections"]
        assert kept["connectionId"] == connection_id
        assert kept["recordCreationDate"] == created["acConnections"][0]["recordCreationDate"]
        assert kept["devices"][0]["deviceId"] == device_id
        assert added["connectionId"] not in {connection_id, 999}
        carrying = sample_installation("6001000009", acConnections=[connection])
        assert (await client.create(carrying)).status == 400
