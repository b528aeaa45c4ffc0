"""Planning from the register, and `verify` and `export` on the command line, against a
register that holds most of the source already and an empty state directory."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.records.samples import installations, nmi
from wem_der.simulator import Simulator
from wem_der.simulator.testing import prefill

from tests.e2e import (
    TOKEN_BODY,
    Tap,
    endpoint_flags,
    read_outcomes,
    read_summary,
    run_settings,
    scripted_settings,
    sim_settings,
    submit,
    wem_der,
    write_jsonl,
)
from tests.register import unstamped
from tests.scripted import Reply, Scripted

N = 200
CONDITIONAL = range(0, N, 10)  # exportLimitkW above approvedCapacity: rule 2024
CHANGED = range(180, 190)  # the register holds another jobNumber for these
ABSENT = range(190, 200)  # and nothing for these


def source() -> list[dict[str, Any]]:
    records = list(installations(N))
    for i in CONDITIONAL:
        records[i]["exportLimitkW"] = records[i]["approvedCapacity"] + 1
    return records


SOURCE = source()


@pytest.fixture
async def holding(tap: Tap) -> AsyncIterator[Simulator]:
    """A register holding 90% of SOURCE as it is, 5% changed and 5% not at all; `tap` sees
    every request made of it after that."""
    async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
        prefill(
            sim.state,
            (
                record | {"jobNumber": "JOB-OTHER"} if i in CHANGED else record
                for i, record in enumerate(SOURCE)
                if i not in ABSENT
            ),
        )
        yield sim


def nmis(indices: range) -> set[str]:
    return {nmi(i) for i in indices}


def exported(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_submit_plans_from_the_register(holding: Simulator, tap: Tap, tmp_path: Path) -> None:
    """From an empty state directory, the changed records go as updates and the absent as
    creates, each right the first time; the rest are skipped, saying when they were read
    and by which transaction; the reads are counted; the register then holds the source."""
    path = write_jsonl(tmp_path / "in.jsonl", SOURCE)
    async with asyncio.timeout(60):
        result = await submit(run_settings(holding, tmp_path, plan="register"), tmp_path, [path])
    writes = tap.writes()
    assert {e.nmi for e in writes if e.method == "PUT"} == nmis(CHANGED)
    assert {e.nmi for e in writes if e.method == "POST"} == nmis(ABSENT)
    assert len(writes) == len(CHANGED) + len(ABSENT)
    reads = [e for e in tap.exchanges if e.method == "GET"]
    assert len(reads) == math.ceil(N / 100)
    assert len(tap.exchanges) == len(CHANGED) + len(ABSENT) + math.ceil(N / 100)
    assert result.summary.requests == len(tap.exchanges)
    assert result.summary.skipped == N - len(CHANGED) - len(ABSENT)
    skipped = read_outcomes(tmp_path / "out")["skipped"]
    read_by = {e.transaction_id for e in reads}
    assert all("read at" in line["reason"] for line in skipped)
    assert {line["transaction_id"] for line in skipped} <= read_by
    assert None not in read_by
    for i, record in enumerate(SOURCE):
        held = holding.state.store.installation(nmi(i))
        assert held is not None
        assert unstamped(held.record) == record


async def test_plan_none_reads_nothing(holding: Simulator, tap: Tap, tmp_path: Path) -> None:
    """`--plan none` neither reads the register nor skips: every record is sent."""
    path = write_jsonl(tmp_path / "in.jsonl", SOURCE[:20])
    async with asyncio.timeout(60):
        result = await submit(run_settings(holding, tmp_path, plan="none"), tmp_path, [path])
    assert [e for e in tap.exchanges if e.method == "GET"] == []
    assert {e.nmi for e in tap.writes()} == nmis(range(20))
    assert result.summary.skipped == 0


async def test_verify_names_the_changed_and_the_absent(
    holding: Simulator, tap: Tap, tmp_path: Path
) -> None:
    """`wem-der verify`: the changed records differ, the absent are missing, the rest the
    same; exit 1, two reads, no write."""
    path = write_jsonl(tmp_path / "in.jsonl", SOURCE)
    out = tmp_path / "verify"
    flags = endpoint_flags(holding, tmp_path)
    done = await wem_der(["verify", str(path), "--out", str(out), *flags], tmp_path)
    assert done.code == 1, done.stderr
    found = [orjson.loads(line) for line in (out / "verify.jsonl").read_bytes().splitlines()]
    by_status: dict[str, set[str]] = {}
    for line in found:
        by_status.setdefault(line["status"], set()).add(line["nmi"])
    assert by_status == {
        "same": nmis(range(N)) - nmis(CHANGED) - nmis(ABSENT),
        "differs": nmis(CHANGED),
        "missing": nmis(ABSENT),
    }
    assert tap.writes() == []
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["requests"] == len(tap.exchanges) == math.ceil(N / 100)


async def test_verify_of_what_the_register_holds_exits_0(
    holding: Simulator, tmp_path: Path
) -> None:
    """Every record the same: exit 0."""
    path = write_jsonl(tmp_path / "in.jsonl", SOURCE[: CHANGED[0]])
    out = tmp_path / "verify"
    flags = endpoint_flags(holding, tmp_path)
    done = await wem_der(["verify", str(path), "--out", str(out), *flags], tmp_path)
    assert done.code == 0, done.stderr
    assert orjson.loads((out / "summary.json").read_bytes())["same"] == CHANGED[0]


async def test_export_by_stage_and_all(holding: Simulator, tap: Tap, tmp_path: Path) -> None:
    """`export --stage Conditional` writes exactly the Conditional installations; `export`
    writes every one, each once; neither writes to the register."""
    flags = endpoint_flags(holding, tmp_path)
    conditional = tmp_path / "conditional.jsonl"
    done = await wem_der(
        ["export", "--stage", "Conditional", "--out", str(conditional), *flags], tmp_path
    )
    assert done.code == 0, done.stderr
    assert {r["nmi"] for r in exported(conditional)} == nmis(CONDITIONAL) - nmis(ABSENT)
    everything = tmp_path / "all.jsonl"
    done = await wem_der(["export", "--out", str(everything), *flags], tmp_path)
    assert done.code == 0, done.stderr
    written = [r["nmi"] for r in exported(everything)]
    assert sorted(written) == sorted(nmis(range(N)) - nmis(ABSENT))
    assert tap.writes() == []


async def test_submitting_an_export_sends_no_write(
    holding: Simulator, tap: Tap, tmp_path: Path
) -> None:
    """An export submitted back from an empty state directory is all skipped."""
    flags = endpoint_flags(holding, tmp_path)
    everything = tmp_path / "all.jsonl"
    done = await wem_der(["export", "--out", str(everything), *flags], tmp_path)
    assert done.code == 0, done.stderr
    out = tmp_path / "run"
    done = await wem_der(["submit", str(everything), "--out", str(out), *flags], tmp_path)
    assert done.code == 0, done.stderr
    assert tap.writes() == []
    assert read_summary(out)["skipped"] == N - len(ABSENT)


async def test_nmi_records_keep_the_ledger_s_plan(
    holding: Simulator, tap: Tap, tmp_path: Path
) -> None:
    """The NMI API has no search: `--kind nmi --plan register` says so once, reads nothing."""
    path = write_jsonl(
        tmp_path / "nmi.jsonl",
        [{"nmi": nmi(i), "substation": "S", "postCode": "6000", "tni": "WPER"} for i in range(3)],
    )
    flags = endpoint_flags(holding, tmp_path)
    args = ["submit", str(path), "--kind", "nmi", "--plan", "register", "--out", "o", *flags]
    done = await wem_der(args, tmp_path)
    assert done.stderr.count("the NMI API has no search") == 1, done.stderr
    assert [e for e in tap.exchanges if e.method == "GET"] == []


async def test_a_search_that_fails_leaves_the_plan_to_the_ledger(
    server: Scripted, tmp_path: Path
) -> None:
    """A refused search decides nothing: its records go as the ledger plans them, creates."""
    refused = {"transactionId": "t", "errors": [{"code": "400", "detail": "nmi: bad"}]}
    created = {"transactionId": "w", "data": {}}
    server.script(Reply(json=TOKEN_BODY), Reply(400, json=refused), *[Reply(json=created)] * 2)
    path = write_jsonl(tmp_path / "in.jsonl", SOURCE[:2])
    settings = scripted_settings(server.url, tmp_path, plan="register")
    async with asyncio.timeout(30):
        result = await submit(settings, tmp_path, [path])
    assert [(seen.method, seen.path.rsplit("/", 1)[-1]) for seen in server.seen[1:]] == [
        ("GET", "installation"),
        ("POST", "installation"),
        ("POST", "installation"),
    ]
    assert (result.summary.accepted, result.summary.requests) == (2, 3)
