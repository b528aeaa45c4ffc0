"""Storage (memory and SQLite across a restart) and the /_sim introspection endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import SecretStr
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.sqlite_store import SqliteStore
from wem_der.simulator.store import MemoryStore, Version
from wem_der.simulator.testing import SimClient, connected, sample_installation

BASE = SimulatorSettings(client_secret=SecretStr("s"))
NMI = {"nmi": "6001000001", "postCode": "6000", "status": "Active"}


async def populate(client: SimClient) -> None:
    assert (await client.create(sample_installation())).status == 200
    assert (await client.update(sample_installation(jobNumber="JOB-2"))).status == 200
    answer = await client.call("POST", client.sim.nmi_url + "/nmi-details", NMI)
    assert answer.status == 200


async def test_sqlite_keeps_records_history_and_counters(tmp_path: Path) -> None:
    """A restarted simulator on the same file has the records, history and id counters."""
    settings = BASE.model_copy(update={"db_path": tmp_path / "register.db"})
    async with asyncio.timeout(10):
        async with connected(settings) as client:
            await populate(client)
        async with connected(settings) as client:
            url = f"{client.sim.installation_url}/installation/6001000001"
            history = await client.call("GET", url + "/history")
            assert [v["jobNumber"] for v in history.body["data"]] == ["JOB-1", "JOB-2"]
            nmi = await client.call("GET", client.sim.nmi_url + "/nmi-details/6001000001")
            assert nmi.body["data"]["postCode"] == "6000"
            expected = {"installations": 1, "installation_versions": 2, "nmi_records": 1}
            assert {k: client.sim.stats()[k] for k in expected} == expected
            created = await client.create(sample_installation("6001000002"))
            [conn] = created.body["data"]["acConnections"]
            assert conn["connectionId"] == 2  # the counter went on from the first run
            assert conn["devices"][0]["deviceId"] == 2


def test_sqlite_store_outside_a_loop_commits_at_once(tmp_path: Path) -> None:
    """Used from plain code (no event loop) every write is durable immediately."""
    path = tmp_path / "r.db"
    store = SqliteStore(path)
    store.save_nmi("6001000001", {"nmi": "6001000001"})
    other = SqliteStore(path)  # a second reader sees the committed row
    try:
        assert other.nmi("6001000001") == {"nmi": "6001000001"}
    finally:
        other.close()
        store.close()


def test_memory_store_basics() -> None:
    """Versions append, the last is current, counters start at 1, clear forgets all."""
    store = MemoryStore()
    store.save_installation("A", Version({"v": 1}))
    store.save_installation("A", Version({"v": 2}))
    assert store.installation("A") == Version({"v": 2})
    assert [v.record["v"] for v in store.history("A")] == [1, 2]
    assert store.next_id("device") == 1
    assert store.next_id("device") == 2
    assert store.counts() == {"installations": 1, "installation_versions": 2, "nmi_records": 0}
    store.clear()
    assert store.installation("A") is None
    assert store.next_id("device") == 1


async def test_records_and_reset_endpoints() -> None:
    """/_sim/records lists what is stored; /_sim/reset forgets records and counters."""
    async with asyncio.timeout(10), connected(BASE) as client:
        await populate(client)
        records = await client.send("GET", client.sim.base_url + "/_sim/records")
        assert records.status == 200
        [installation] = records.body["installations"]
        assert installation["data"]["jobNumber"] == "JOB-2"
        assert installation["exceptions"] == []
        assert [r["nmi"] for r in records.body["nmiRecords"]] == ["6001000001"]

        assert (await client.send("POST", client.sim.base_url + "/_sim/reset")).status == 200
        stats = (await client.send("GET", client.sim.base_url + "/_sim/stats")).body
        assert stats["installations"] == 0
        assert stats["der_requests_received"] == 0
        assert stats["requests"] == {}
        # Tokens survive a reset.
        assert (await client.create(sample_installation())).status == 200


async def test_stats_endpoint_matches_method() -> None:
    """GET /_sim/stats carries the same counters as Simulator.stats()."""
    async with asyncio.timeout(10), connected(BASE) as client:
        await populate(client)
        body = (await client.send("GET", client.sim.base_url + "/_sim/stats")).body
        assert body.pop("transactionId")
        assert body == client.sim.stats()
        assert body["requests"]["installation.create"] == {"200": 1}
        assert body["max_requests_in_window"] == 3
