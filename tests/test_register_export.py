"""register/export.py: the register's installations, each once, as records to submit."""

from __future__ import annotations

import asyncio
import copy
import gzip
import io
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from wem_der.errors import SearchFailed
from wem_der.records.outcomes import Outcome, OutcomeRecord, PreparedRecord
from wem_der.records.preflight import Preflight
from wem_der.records.samples import installations, nmi
from wem_der.records.shapes import RecordKind
from wem_der.register.decide import decide
from wem_der.register.export import export
from wem_der.register.search import Filters, Held
from wem_der.run.plan import numbered
from wem_der.simulator import Simulator, SimulatorSettings
from wem_der.simulator.testing import prefill
from wem_der.testing import VirtualClock

from tests.e2e import TOKEN_BODY
from tests.register import reading, sim_reader, unstamped
from tests.scripted import Reply, Scripted

CONDITIONAL = range(0, 60, 6)  # exportLimitkW above approvedCapacity: rule 2024


def source(count: int = 60) -> list[dict[str, Any]]:
    records = list(installations(count))
    for i in CONDITIONAL:
        if i < count:
            records[i]["exportLimitkW"] = records[i]["approvedCapacity"] + 1
    return records


@pytest.fixture(params=["envelope", "list"])
async def holding(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    """A register holding `source()`: 50 Confirmed installations and 10 Conditional."""
    settings = SimulatorSettings(client_secret=SecretStr("s"), search_answer=request.param)
    clock = VirtualClock()
    async with Simulator(settings, clock=clock, sleep=clock.sleep) as sim:
        prefill(sim.state, source())
        yield sim


def exported(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return [orjson.loads(line) for line in data.splitlines()]


def nmis_of(records: list[dict[str, Any]]) -> list[str]:
    return [r["nmi"] for r in records]


async def test_with_no_filter_every_installation_is_exported(
    holding: Simulator, tmp_path: Path
) -> None:
    """The search needs a filter, so each stage is read: every installation, each once, as
    the client submitted it."""
    out = tmp_path / "exports" / "all.jsonl"
    async with asyncio.timeout(30), sim_reader(holding, page_size=25) as reader:
        result = await export(reader, Filters(), out)
    records = exported(out)
    confirmed = [nmi(i) for i in range(60) if i not in CONDITIONAL]
    assert nmis_of(records) == confirmed + [nmi(i) for i in CONDITIONAL]
    assert sorted(records, key=lambda r: str(r["nmi"])) == source()
    searches = holding.stats()["requests"]["installation.search"]
    # Confirmed: pages of 25, 25 and an empty third; Conditional: one short page.
    assert searches == {"200": 4}
    assert (result.records, result.requests) == (60, 4)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert list(out.parent.iterdir()) == [out]


async def test_a_stage_exports_exactly_its_installations(
    holding: Simulator, tmp_path: Path
) -> None:
    """`--stage Conditional` gives the Conditional installations and no others."""
    out = tmp_path / "conditional.jsonl"
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        await export(reader, Filters(installation_stage="Conditional"), out)
    assert nmis_of(exported(out)) == [nmi(i) for i in CONDITIONAL]


async def test_gzip_and_streams(holding: Simulator, tmp_path: Path) -> None:
    """A name ending .gz is written gzip-compressed; a stream gets the lines as they are."""
    packed = tmp_path / "all.jsonl.gz"
    stream = io.BytesIO()
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        await export(reader, Filters(installation_stage="Confirmed"), packed)
        await export(reader, Filters(installation_stage="Confirmed"), stream)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert exported(packed) == lines
    assert len(lines) == 50
    with gzip.open(packed) as fh:
        assert fh.read().count(b"\n") == 50


async def test_nmis_are_read_in_batches(holding: Simulator, tmp_path: Path) -> None:
    """With NMIs (`--nmi-file`), the held ones of them are exported, each once, in their
    order; filters still apply."""
    out = tmp_path / "some.jsonl"
    asked = [nmi(59), nmi(3), "8009999999", nmi(3), nmi(6), nmi(7)]
    async with asyncio.timeout(30), sim_reader(holding, batch_size=2) as reader:
        result = await export(reader, Filters(), out, nmis=asked)
        await export(reader, Filters(installation_stage="Conditional"), tmp_path / "c", nmis=asked)
    assert nmis_of(exported(out)) == [nmi(59), nmi(3), nmi(6), nmi(7)]
    assert result.requests == 3
    assert nmis_of(exported(tmp_path / "c")) == [nmi(6)]


async def test_an_export_is_submit_input_that_sends_nothing(
    holding: Simulator, tmp_path: Path
) -> None:
    """Every exported line passes pre-flight, and planned from the register, each is
    skipped: the register holds it already."""
    out = tmp_path / "all.jsonl"
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        await export(reader, Filters(), out)
        checked = [
            Preflight(RecordKind.INSTALLATION).check(seq, item)
            async for seq, item in numbered([str(out)])
        ]
        prepared = [rec for rec in checked if isinstance(rec, PreparedRecord)]
        assert len(prepared) == len(checked) == 60
        lookup = await reader.lookup([rec.nmi for rec in prepared])
    outcomes = [decide(rec, lookup.held[rec.nmi]) for rec in prepared]
    assert all(isinstance(o, OutcomeRecord) and o.outcome is Outcome.SKIPPED for o in outcomes), (
        outcomes
    )


async def test_records_moving_between_pages_are_written_once(
    holding: Simulator, tmp_path: Path
) -> None:
    """A record inserted ahead of the pages already read pushes the last one read onto the
    next page, and a record that turns Conditional after its page is found again with that
    stage: each is written once."""
    out = tmp_path / "all.jsonl"
    confirmed = [nmi(i) for i in range(60) if i not in CONDITIONAL]
    early = copy.deepcopy(source()[1]) | {"nmi": "8000000000"}
    turned = copy.deepcopy(source()[59])
    assert turned["nmi"] == confirmed[-1]  # the last page's last: nothing after it moves

    def meanwhile(held: Held) -> None:
        if held.nmi == confirmed[24]:  # the last of page 1 (Confirmed, 25 a page)
            prefill(holding.state, [early])  # sorts first: page 2 starts with this one again
        if held.nmi == turned["nmi"]:
            prefill(holding.state, [turned | {"exportLimitkW": turned["approvedCapacity"] + 1}])

    async with asyncio.timeout(30), sim_reader(holding, page_size=25) as reader:
        await export(reader, Filters(), out, on_record=meanwhile)
    written = nmis_of(exported(out))
    assert len(written) == len(set(written))
    assert set(written) == {nmi(i) for i in range(60)}
    turned_now = holding.store.installation(turned["nmi"])
    assert turned_now is not None
    assert unstamped(turned_now.record)["exportLimitkW"] == turned["approvedCapacity"] + 1


async def test_a_search_that_fails_leaves_no_file(server: Scripted, tmp_path: Path) -> None:
    """An export that cannot read a page raises, and leaves neither the file nor a part."""
    page = Reply(json=[{"nmi": nmi(i)} for i in range(25)])
    server.script(Reply(json=TOKEN_BODY), page, Reply(400))
    out = tmp_path / "all.jsonl"
    base = server.url + "/der"
    async with (
        asyncio.timeout(30),
        reading(base, token_url=server.url + "/oauth/token", page_size=25) as reader,
    ):
        with pytest.raises(SearchFailed, match="page 2"):
            await export(reader, Filters(installation_stage="Confirmed"), out)
    assert list(tmp_path.iterdir()) == []
