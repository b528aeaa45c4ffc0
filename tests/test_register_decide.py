"""register/decide.py: what the register's current version means for a record to submit."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import SecretStr
from wem_der.records.outcomes import Outcome, OutcomeRecord, PreparedRecord, SourceItem, SourceRef
from wem_der.records.preflight import Preflight
from wem_der.records.shapes import RecordKind
from wem_der.register.decide import decide
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.testing import connected, prefill, sample_installation

from tests.register import sim_reader

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"))


def prepared(record: dict[str, Any]) -> PreparedRecord:
    checked = Preflight(RecordKind.INSTALLATION).check(
        0, SourceItem(SourceRef("in.jsonl", 1), record)
    )
    assert isinstance(checked, PreparedRecord), checked
    return checked


def test_an_nmi_the_register_lacks_is_created() -> None:
    """No version held: sent, and its first request is a create."""
    rec = prepared(sample_installation())
    assert decide(rec, None) is None
    assert rec.exists is False


async def test_the_same_content_is_skipped_saying_when_and_by_which_read() -> None:
    """Held as it is: skipped, with the search's transaction id and when it was read."""
    async with asyncio.timeout(10), connected(SETTINGS) as client:
        prefill(client.sim.state, [sample_installation()])
        async with sim_reader(client.sim) as reader:
            held = (await reader.lookup(["6001000001"])).held["6001000001"]
    rec = prepared(sample_installation())
    skipped = decide(rec, held)
    assert isinstance(skipped, OutcomeRecord)
    assert skipped.outcome is Outcome.SKIPPED
    assert skipped.transaction_id == held.transaction_id is not None
    assert held.read_at.isoformat(timespec="seconds") in (skipped.reason or "")
    assert (skipped.nmi, skipped.source, skipped.content_hash) == (
        rec.nmi,
        rec.source,
        rec.content_hash,
    )


async def test_other_content_is_an_update_carrying_the_registers_ids() -> None:
    """Held otherwise: an update whose connections and devices name the register's, so
    that sending it leaves the register equal to the source, its ids kept."""
    async with asyncio.timeout(10), connected(SETTINGS) as client:
        prefill(client.sim.state, [sample_installation()])
        changed = sample_installation(jobNumber="JOB-2")
        changed["acConnections"][0]["nspConnectionId"] = None  # matched by position
        async with sim_reader(client.sim) as reader:
            held = (await reader.lookup(["6001000001"])).held["6001000001"]
            plain = prepared(changed)
            assert decide(plain, held, carry_register_ids=False) is None
            assert plain.payload == changed
            rec = prepared(changed)
            source_hash = rec.content_hash
            assert decide(rec, held) is None
            assert rec.exists is True
            assert rec.content_hash == source_hash
            [connection] = rec.payload["acConnections"]
            [was] = held.record["acConnections"]
            assert connection["connectionId"] == was["connectionId"]
            assert connection["devices"][0]["deviceId"] == was["devices"][0]["deviceId"]
            answer = await client.update(rec.payload)
            assert answer.status == 200, answer.body
            assert answer.body["data"]["acConnections"][0]["connectionId"] == was["connectionId"]
            now = (await reader.lookup(["6001000001"])).held["6001000001"]
        again = decide(prepared(changed), now)
        assert isinstance(again, OutcomeRecord)
        assert again.outcome is Outcome.SKIPPED
