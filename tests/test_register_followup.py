"""register/followup.py and `wem-der followup`: a run's Conditional records read back from
the register, and the report that shows the latest follow-up."""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.errors import ConfigError
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import SourceRef
from wem_der.records.samples import nmi
from wem_der.records.shapes import RecordKind
from wem_der.register.followup import Conditional, follow_up
from wem_der.report.collect import collect
from wem_der.report.html import to_html
from wem_der.run.api import followup, submit
from wem_der.simulator import Simulator
from wem_der.simulator.testing import prefill

from tests.e2e import (
    CLIENT_ID,
    PARTICIPANT,
    SECRET,
    TOKEN_BODY,
    endpoint_flags,
    read_outcomes,
    records,
    sim_settings,
    wem_der,
    write_jsonl,
)
from tests.register import reading
from tests.scripted import Reply, Scripted

N = 40
CONDITIONAL = range(0, N, 3)  # exportLimitkW above approvedCapacity: rule 2024
CONFIRMED_LATER = (0, 9, 21, 33)  # the register confirms these after the run
BATCH = 5
TIMEOUT_S = 60


def source() -> list[dict[str, Any]]:
    batch = records(N, seed=7, start=700)
    for i in CONDITIONAL:
        batch[i]["exportLimitkW"] = batch[i]["approvedCapacity"] + 1
    return batch


SOURCE = source()


@pytest.fixture(params=["envelope", "list"])
async def register(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    """The simulator, answering a search with its envelope or with the bare list."""
    async with Simulator(sim_settings(search_answer=request.param)) as sim:
        yield sim


def requests_made(sim: Simulator) -> dict[str, dict[str, int]]:
    """The requests `sim` answered, by endpoint and status."""
    return {name: dict(by_status) for name, by_status in sim.stats()["requests"].items()}


def aimed_at(sim: Simulator, tmp_path: Path) -> dict[str, Any]:
    """The keywords that point a run at `sim`, with its ledger in `tmp_path/state`; the
    ledger alone plans, so the run reads nothing."""
    return {
        "base_url": sim.installation_url,
        "nmi_base_url": sim.nmi_url,
        "token_url": sim.token_url,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "participant_id": PARTICIPANT,
        "state_dir": tmp_path / "state",
        "plan": "ledger",
    }


async def run_with_conditionals(sim: Simulator, tmp_path: Path, batch: list[Any]) -> Path:
    """A real run of `batch` into `tmp_path/out`; its outcome directory."""
    inputs = write_jsonl(tmp_path / "in.jsonl", batch)
    out = tmp_path / "out"
    await submit([inputs], out=out, **aimed_at(sim, tmp_path))
    return out


def confirm(sim: Simulator, indices: tuple[int, ...]) -> None:
    """The register confirms these records: each stored again without its finding."""
    prefill(
        sim.state,
        [SOURCE[i] | {"exportLimitkW": SOURCE[i]["approvedCapacity"]} for i in indices],
    )


def followup_lines(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (out / "followup.jsonl").read_bytes().splitlines()]


async def test_followup_reports_exactly_the_confirmed_ones(
    register: Simulator, tmp_path: Path
) -> None:
    """After the run, the register confirms some Conditional records: the follow-up names
    exactly those confirmed, the rest still conditional with their Conditional connections,
    one line per NMI in the run's order, in ceil(n / batch) searches and no write; the run's
    settings are reused, given only the secret."""
    async with asyncio.timeout(TIMEOUT_S):
        out = await run_with_conditionals(register, tmp_path, SOURCE)
        confirm(register, CONFIRMED_LATER)
        before = requests_made(register)
        result = await followup(out, client_secret=SECRET, search_batch_size=BATCH)
    # In input order, as the follow-up has them (the outcome file has them as they ended).
    conditional = sorted(read_outcomes(out)["conditional"], key=lambda o: o["source"]["line"])
    assert [line["nmi"] for line in conditional] == [nmi(700 + i) for i in CONDITIONAL]
    lines = followup_lines(out)
    assert [line["nmi"] for line in lines] == [line["nmi"] for line in conditional]
    for line, outcome, i in zip(lines, conditional, CONDITIONAL, strict=True):
        assert line["source"] == outcome["source"]
        assert line["transaction_id"] == outcome["transaction_id"] is not None
        assert line["run_id"] == result.summary["run_id"] == outcome["run_id"]
        assert line["exceptions"] is None  # a search answer gives none: not given
        assert line["read_at"]
        enveloped = register.settings.search_answer == "envelope"
        assert (line["read_transaction_id"] is not None) is enveloped
        if i in CONFIRMED_LATER:
            assert (line["status"], line["stage"], line["confirmed"]) == (
                "confirmed",
                "Confirmed",
                True,
            )
            assert line["conditional"] == []
        else:
            assert (line["status"], line["stage"], line["confirmed"]) == (
                "conditional",
                "Conditional",
                False,
            )
            # Rule 2024 marks every AC connection, and none of their devices.
            connections = len(SOURCE[i]["acConnections"])
            assert line["conditional"] == [f"acConnections[{k}]" for k in range(connections)]
    searches = math.ceil(len(CONDITIONAL) / BATCH)
    assert searches == result.summary["requests"] == 3
    # The searches and the follow-up's own token, and no write.
    assert requests_made(register) == before | {
        "installation.search": {"200": searches},
        "oauth.token": {"200": before["oauth.token"]["200"] + 1},
    }
    summary = orjson.loads((out / "followup.json").read_bytes())
    assert summary == result.summary
    assert {k: summary[k] for k in ("records", "conditional", "confirmed", "missing", "error")} == {
        "records": len(CONDITIONAL),
        "conditional": len(CONDITIONAL) - len(CONFIRMED_LATER),
        "confirmed": len(CONFIRMED_LATER),
        "missing": 0,
        "error": 0,
    }
    assert (result.all_read, result.exit_code) == (True, 0)
    for name in ("followup.jsonl", "followup.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600


async def test_a_later_followup_replaces_the_earlier_and_the_report_shows_it(
    register: Simulator, tmp_path: Path
) -> None:
    """A second follow-up replaces followup.jsonl whole (no temporary file left); the
    report, as JSON and as a page, shows the latest: when, and the count per status."""
    async with asyncio.timeout(TIMEOUT_S):
        out = await run_with_conditionals(register, tmp_path, SOURCE)
        await followup(out, client_secret=SECRET)
        confirm(register, CONFIRMED_LATER)
        again = await followup(out, client_secret=SECRET)
        run_id = again.summary["run_id"]
        async with Ledger(tmp_path / "state" / "ledger.sqlite3") as ledger:
            report = await collect(ledger, run_id=run_id, nmi=None, kind=RecordKind.INSTALLATION)
    assert len(followup_lines(out)) == len(CONDITIONAL)
    assert sum(line["confirmed"] for line in followup_lines(out)) == len(CONFIRMED_LATER)
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    shown = report["followup"]
    assert shown["counts"] == {
        "conditional": len(CONDITIONAL) - len(CONFIRMED_LATER),
        "confirmed": len(CONFIRMED_LATER),
        "missing": 0,
        "error": 0,
    }
    # The latest follow-up's: read after it began, not when the first one was.
    assert shown["read_at"] >= again.summary["read_at"][:19] + "Z"
    assert shown["exceptions"] == []
    page = to_html(report)
    assert f"{len(CONDITIONAL)} records, {len(CONFIRMED_LATER)} Confirmed since the run" in page
    assert nmi(700 + CONFIRMED_LATER[0]) in page


async def test_each_nmi_once_by_its_latest_stored_version(
    register: Simulator, tmp_path: Path
) -> None:
    """An NMI sent twice is followed up by its latest stored version: not at all when that
    one was accepted, from its later line when both ended conditional."""
    over = {"exportLimitkW": SOURCE[1]["approvedCapacity"] + 1}
    batch = [
        SOURCE[1] | over,  # line 1: conditional ...
        SOURCE[0],  # line 2: conditional (SOURCE[0] is one of CONDITIONAL)
        SOURCE[1],  # line 3: ... then accepted
        SOURCE[0] | {"jobNumber": "JOB-AGAIN"},  # line 4: conditional again
    ]
    async with asyncio.timeout(TIMEOUT_S):
        out = await run_with_conditionals(register, tmp_path, batch)
        result = await followup(out, client_secret=SECRET)
    outcomes = read_outcomes(out)
    assert len(outcomes["conditional"]) == 3
    lines = followup_lines(out)
    assert [(line["nmi"], line["source"]["line"]) for line in lines] == [(SOURCE[0]["nmi"], 4)]
    assert result.summary["requests"] == 1


async def test_every_record_shape_is_read_defensively(server: Scripted, tmp_path: Path) -> None:
    """A bare list and an envelope; a stage of the record's own or its parts'; exceptions
    at the top, on a connection as one object, on a device beside a non-object; parts that
    are not objects; a record with no stage at all; an NMI not held (missing), a search
    that fails and an NMI that cannot be searched for (error): exit 1."""
    full = {
        "nmi": nmi(1),
        "acConnections": [
            {
                "installationStage": "Confirmed",
                "exceptions": {"code": "2023", "name": "Inverter"},
                "devices": [
                    "junk",
                    {"installationStage": "Conditional", "exceptions": [{"code": "2040"}, "odd"]},
                ],
            },
            7,
        ],
    }
    server.script(
        Reply(json=TOKEN_BODY),
        Reply(json=[{"nmi": nmi(0), "installationStage": "Confirmed", "exceptions": []}, full]),
        Reply(
            json={
                "transactionId": "T-2",
                "data": [
                    {"nmi": nmi(3), "acConnections": "not a list"},
                    {"nmi": nmi(4), "acConnections": [{"devices": [{}]}]},
                ],
            }
        ),
        Reply(503),
        Reply(503),
    )
    asked = [nmi(i) for i in range(7)] + ["6001,6002"]
    chosen = [
        Conditional(n, SourceRef("in.jsonl", line=k + 1), f"W{k}") for k, n in enumerate(asked)
    ]
    base = server.url + "/der"
    async with (
        asyncio.timeout(TIMEOUT_S),
        reading(
            base, token_url=server.url + "/oauth/token", batch_size=3, max_attempts=2
        ) as reader,
    ):
        result = await follow_up(chosen, reader, tmp_path / "f", run_id="r1", concurrency=1)
    found = {line["nmi"]: line for line in followup_lines(tmp_path / "f")}
    assert list(found) == asked

    def shape(n: str) -> tuple[Any, ...]:
        line = found[n]
        return (line["status"], line["stage"], line["confirmed"], line["conditional"])

    assert shape(nmi(0)) == ("confirmed", "Confirmed", True, [])
    assert found[nmi(0)]["exceptions"] == []  # given, and empty
    assert shape(nmi(1)) == ("conditional", "Conditional", False, ["acConnections[0].devices[1]"])
    assert found[nmi(1)]["exceptions"] == [
        {"code": "2023", "name": "Inverter", "path": "acConnections[0]"},
        {"code": "2040", "path": "acConnections[0].devices[1]"},
        {"path": "acConnections[0].devices[1]", "value": "odd"},
    ]
    assert shape(nmi(2))[0] == "missing"
    assert found[nmi(2)]["reason"] == "the register holds no installation for this NMI"
    assert shape(nmi(3)) == ("conditional", None, False, [])
    assert shape(nmi(4)) == ("conditional", None, False, [])
    assert found[nmi(3)]["exceptions"] is None
    assert found[nmi(3)]["read_transaction_id"] == "T-2"
    assert found[nmi(1)]["read_transaction_id"] is None
    assert shape(nmi(5))[0] == "missing"
    assert found[nmi(6)]["status"] == "error"
    assert found[nmi(6)]["reason"] == (
        "the register could not be read: retry budget spent; last: HTTP 503"
    )
    assert found["6001,6002"]["status"] == "error"
    assert found[nmi(4)]["transaction_id"] == "W4"
    counts = {k: result.summary[k] for k in ("conditional", "confirmed", "missing", "error")}
    assert counts == {"conditional": 3, "confirmed": 1, "missing": 2, "error": 2}
    assert (result.summary["requests"], result.exit_code) == (4, 1)
    searched = [seen.query["nmi"] for seen in server.seen[1:]]
    assert searched == [",".join(asked[:3]), ",".join(asked[3:6]), nmi(6), nmi(6)]


async def test_the_command_writes_the_followup_and_report_shows_it(
    register: Simulator, tmp_path: Path
) -> None:
    """`wem-der followup DIR` exits 0 having read every record, and `report DIR` shows when
    it was read, the count per status and the exception codes given (none here)."""
    async with asyncio.timeout(TIMEOUT_S):
        out = await run_with_conditionals(register, tmp_path, SOURCE)
    confirm(register, CONFIRMED_LATER)
    flags = [*endpoint_flags(register, tmp_path), "--search-batch-size", str(BATCH)]
    done = await wem_der(["followup", str(out), *flags], tmp_path)
    assert done.code == 0, done.stderr
    assert f"{len(CONDITIONAL)} conditional records read back" in done.stdout
    assert f"confirmed {len(CONFIRMED_LATER)}" in done.stdout
    assert f"{math.ceil(len(CONDITIONAL) / BATCH)} requests" in done.stdout
    report = await wem_der(["report", str(out)], tmp_path)
    assert report.code == 0, report.stderr
    summary = orjson.loads((out / "followup.json").read_bytes())
    assert f"read {summary['read_at'][:19]}" in report.stdout
    still = len(CONDITIONAL) - len(CONFIRMED_LATER)
    assert f"\n  still conditional       {still}\n" in report.stdout
    assert f"\n  now confirmed            {len(CONFIRMED_LATER)}\n" in report.stdout
    assert "exception codes now: none given by the register" in report.stdout
    elsewhere = tmp_path / "elsewhere"
    done = await wem_der(["followup", str(out), "--out", str(elsewhere), *flags], tmp_path)
    assert done.code == 0, done.stderr
    assert len(followup_lines(elsewhere)) == len(CONDITIONAL)


async def test_a_bad_run_or_an_nmi_run_is_a_clear_usage_error(
    register: Simulator, tmp_path: Path
) -> None:
    """A directory that is no run's, a run id the ledger does not hold, and a run of NMI
    records (the NMI API has no search) are refused with exit 2, saying why."""
    flags = endpoint_flags(register, tmp_path)
    (tmp_path / "empty").mkdir()
    nowhere = await wem_der(["followup", str(tmp_path / "empty"), *flags], tmp_path)
    assert nowhere.code == 2
    assert "holds no run.json, so it is not the outcome directory of a run" in nowhere.stderr
    nmis = write_jsonl(
        tmp_path / "nmi.jsonl",
        [{"nmi": nmi(i), "substation": "S", "postCode": "6000", "tni": "WPER"} for i in range(2)],
    )
    sent = await wem_der(["submit", str(nmis), "--kind", "nmi", "--out", "nmis", *flags], tmp_path)
    assert sent.code == 0, sent.stderr
    refused = await wem_der(["followup", str(tmp_path / "nmis"), *flags], tmp_path)
    assert refused.code == 2
    assert "the NMI API has no search" in refused.stderr
    assert not (tmp_path / "nmis" / "followup.jsonl").exists()
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(ConfigError, match="no run 'r404'"):
            await followup("r404", client_secret=SECRET, state_dir=tmp_path / "state")
