"""register/verify.py: the source against the register, one status per record, no write."""

from __future__ import annotations

import asyncio
import csv
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from wem_der.errors import ConfigError, Misconfigured
from wem_der.records.preflight import Preflight
from wem_der.records.samples import installations
from wem_der.records.shapes import RecordKind
from wem_der.register.verify import DIFFERENCE_COLUMNS, MAX_BATCH_ENTRIES, verify
from wem_der.run.plan import numbered
from wem_der.simulator import Simulator, SimulatorSettings
from wem_der.simulator.testing import prefill
from wem_der.testing import VirtualClock

from tests.e2e import TOKEN_BODY, write_jsonl
from tests.register import reading, sim_reader
from tests.scripted import Reply, Scripted

SOURCE = list(installations(200))
CHANGED = range(180, 190)  # the register holds another jobNumber for these
ABSENT = range(190, 200)  # and nothing for these
INSTALLATIONS = Preflight(RecordKind.INSTALLATION)


@pytest.fixture(params=["envelope", "list"])
async def holding(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    """A register holding SOURCE but for the changed and absent records."""
    settings = SimulatorSettings(client_secret=SecretStr("s"), search_answer=request.param)
    clock = VirtualClock()
    async with Simulator(settings, clock=clock, sleep=clock.sleep) as sim:
        held = [
            record | {"jobNumber": "JOB-OTHER"} if i in CHANGED else record
            for i, record in enumerate(SOURCE)
            if i not in ABSENT
        ]
        prefill(sim.state, held)
        yield sim


def source_file(tmp_path: Path, extra: Sequence[Any] = ()) -> Path:
    """SOURCE as JSONL, then `extra` lines."""
    return write_jsonl(tmp_path / "source.jsonl", [*SOURCE, *extra])


def lines(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (out / "verify.jsonl").read_bytes().splitlines()]


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "differences.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


async def test_each_record_gets_its_status(holding: Simulator, tmp_path: Path) -> None:
    """Changed records differ (with the field), absent ones are missing, refused ones
    invalid, the rest the same; one line each, in input order, and nothing written to the
    register: two searches for 200 NMIs."""
    path = source_file(tmp_path, [{"nmi": "8001000000", "approvedCapacity": "ten"}])
    out = tmp_path / "verify"
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        result = await verify(numbered([str(path)]), reader, out, preflight=INSTALLATIONS)
    found = lines(out)
    assert [line["source"]["line"] for line in found] == list(range(1, 202))
    status = {line["source"]["line"] - 1: line["status"] for line in found}
    assert {i for i, s in status.items() if s == "differs"} == set(CHANGED)
    assert {i for i, s in status.items() if s == "missing"} == set(ABSENT)
    assert status[200] == "invalid"
    assert sum(s == "same" for s in status.values()) == 180
    differs = found[CHANGED[0]]
    assert differs["differences"] == [
        {"path": "jobNumber", "source": SOURCE[CHANGED[0]]["jobNumber"], "register": "JOB-OTHER"}
    ]
    assert differs["read_at"]
    assert (differs["transaction_id"] is not None) is (holding.settings.search_answer == "envelope")
    assert "approvedCapacity" in found[200]["reason"]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert result.summary == summary
    assert {k: summary[k] for k in ("records", "same", "differs", "missing", "invalid")} == {
        "records": 201,
        "same": 180,
        "differs": 10,
        "missing": 10,
        "invalid": 1,
    }
    assert (summary["error"], summary["requests"]) == (0, 2)
    assert not result.all_same
    stats = holding.stats()
    assert stats["requests"] == {"oauth.token": {"200": 1}, "installation.search": {"200": 2}}
    assert stats["installation_versions"] == 190


async def test_differences_csv_has_a_row_per_difference_or_reason(
    holding: Simulator, tmp_path: Path
) -> None:
    """One row per difference of a record that differs, one saying why for each missing or
    invalid record, none for the same ones; the files are the owner's alone."""
    path = source_file(tmp_path, ["not a record"])
    out = tmp_path / "verify"
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        await verify(numbered([str(path)]), reader, out, preflight=INSTALLATIONS)
    found = rows(out)
    assert tuple(found[0]) == DIFFERENCE_COLUMNS
    assert [r["status"] for r in found] == ["differs"] * 10 + ["missing"] * 10 + ["invalid"]
    first = found[0]
    assert (first["path"], first["register_value"]) == ("jobNumber", "JOB-OTHER")
    assert first["source_value"] == SOURCE[CHANGED[0]]["jobNumber"]
    assert first["source_line"] == str(CHANGED[0] + 1)
    assert found[10]["detail"] == "the register holds no installation for this NMI"
    for name in ("verify.jsonl", "differences.csv", "summary.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600


async def test_hostile_values_are_escaped_in_the_csv(holding: Simulator, tmp_path: Path) -> None:
    """A value a spreadsheet would run as a formula, or a terminal act on, is made inert."""
    formula = SOURCE[0] | {"jobNumber": "=1+1"}
    escape = SOURCE[1] | {"jobNumber": "JOB\x1b[2J"}
    path = write_jsonl(tmp_path / "source.jsonl", [formula, escape])
    out = tmp_path / "verify"
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        await verify(numbered([str(path)]), reader, out, preflight=INSTALLATIONS)
    assert [row["source_value"] for row in rows(out)] == ["'=1+1", "'JOB\\x1b[2J'"]


async def test_concurrent_searches_keep_the_input_order(holding: Simulator, tmp_path: Path) -> None:
    """With small batches read four at a time, lines are still in input order, and each
    batch costs one request."""
    path = source_file(tmp_path)
    out = tmp_path / "verify"
    async with asyncio.timeout(30), sim_reader(holding, batch_size=10) as reader:
        result = await verify(
            numbered([str(path)]), reader, out, preflight=INSTALLATIONS, concurrency=4
        )
    assert [line["nmi"] for line in lines(out)] == [r["nmi"] for r in SOURCE]
    assert result.summary["requests"] == 20


async def test_a_batch_holds_a_bounded_number_of_records(
    holding: Simulator, tmp_path: Path
) -> None:
    """Many lines of few NMIs are not held all at once: a batch ends at MAX_BATCH_ENTRIES
    records, so 1200 lines of one NMI take two searches."""
    path = write_jsonl(tmp_path / "source.jsonl", [SOURCE[0]] * (MAX_BATCH_ENTRIES + 200))
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        result = await verify(
            numbered([str(path)]), reader, tmp_path / "verify", preflight=INSTALLATIONS
        )
    assert (result.summary["same"], result.summary["requests"]) == (MAX_BATCH_ENTRIES + 200, 2)


async def test_a_register_holding_every_record_is_all_same(
    holding: Simulator, tmp_path: Path
) -> None:
    """Only when every record is the same does the result say so."""
    path = write_jsonl(tmp_path / "source.jsonl", SOURCE[:180])
    seen: list[str] = []
    async with asyncio.timeout(30), sim_reader(holding) as reader:
        result = await verify(
            numbered([str(path)]),
            reader,
            tmp_path / "verify",
            preflight=INSTALLATIONS,
            on_verified=lambda verified: seen.append(verified.status.value),
        )
    assert result.all_same
    assert seen == ["same"] * 180


def scripted_reader(server: Scripted, **options: Any) -> Any:
    return reading(server.url + "/der", token_url=server.url + "/oauth/token", **options)


async def test_a_search_that_fails_for_good_is_an_error_status(
    server: Scripted, tmp_path: Path
) -> None:
    """Records whose search spent its retries are `error`, saying why; not `missing`."""
    server.script(Reply(json=TOKEN_BODY), Reply(503), Reply(503))
    path = write_jsonl(tmp_path / "source.jsonl", SOURCE[:3])
    out = tmp_path / "verify"
    async with asyncio.timeout(30), scripted_reader(server, max_attempts=2) as reader:
        result = await verify(numbered([str(path)]), reader, out, preflight=INSTALLATIONS)
    assert [line["status"] for line in lines(out)] == ["error"] * 3
    assert lines(out)[0]["reason"] == (
        "the register could not be read: retry budget spent; last: HTTP 503"
    )
    assert (result.summary["error"], result.summary["requests"]) == (3, 2)


async def test_a_misconfigured_client_raises_its_own_error(
    server: Scripted, tmp_path: Path
) -> None:
    """An answer that shows the client misconfigured stops verify with that error."""
    server.script(Reply(json=TOKEN_BODY), Reply(405))
    path = write_jsonl(tmp_path / "source.jsonl", SOURCE[:3])
    async with asyncio.timeout(30), scripted_reader(server) as reader:
        with pytest.raises(Misconfigured, match="HTTP 405"):
            await verify(numbered([str(path)]), reader, tmp_path / "v", preflight=INSTALLATIONS)


async def test_nmi_records_cannot_be_verified(server: Scripted, tmp_path: Path) -> None:
    """The NMI API has no search: verify says so rather than read installations."""
    path = write_jsonl(tmp_path / "source.jsonl", [])
    async with asyncio.timeout(30), scripted_reader(server) as reader:
        with pytest.raises(ConfigError, match="NMI API has no search"):
            await verify(
                numbered([str(path)]), reader, tmp_path / "v", preflight=Preflight(RecordKind.NMI)
            )
    assert server.seen == []
