"""`wem-der resubmit`: send chosen records of an earlier run again, optionally corrected.

Against a simulator process without faults, so that every request count is exact.
"""

from __future__ import annotations

import asyncio
import copy
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.records.samples import installations
from wem_der.send.reconcile import register_holds

from tests.e2e import read_outcomes, run_cli, write_jsonl
from tests.processes import RUN_TIMEOUT_S, Result, Sim, outcome_lines, run_id_of, wem_der

# Positions in the batch, and what the simulated register makes of them.
PHASES = 8  # installedPhasesCount 3 > availablePhasesCount 1: rejected, rule 1012
FUTURE = 9  # commissioned in 2099: rejected, rule 1010
EXPORT = 10  # exportLimitkW above approvedCapacity: conditional, rule 2024
PHASES_TOO = 11  # rejected, rule 1012, and never corrected


def batch() -> list[dict[str, Any]]:
    records = list(installations(12, seed=9, start=700))
    records[PHASES]["installedPhasesCount"] = 3
    records[FUTURE]["acConnections"][0]["commissioningDate"] = "2099-01-01"
    records[EXPORT]["exportLimitkW"] = records[EXPORT]["approvedCapacity"] + 5
    records[PHASES_TOO]["installedPhasesCount"] = 3
    return records


@pytest.fixture
def parent(register: Sim, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A finished run of `batch()` on an emptied register: 8 accepted, 3 rejected,
    1 conditional."""
    records = batch()
    inputs = write_jsonl(tmp_path / "nightly.jsonl", records)
    out = tmp_path / "nightly"
    done = wem_der("submit", str(inputs), "--out", str(out), *register.flags(tmp_path / "state"))
    assert done.code == 1, done.output
    outcomes = {line["nmi"]: line["outcome"] for line in outcome_lines(out)}
    assert [outcomes[records[i]["nmi"]] for i in (PHASES, FUTURE, EXPORT, PHASES_TOO)] == [
        "rejected",
        "rejected",
        "conditional",
        "rejected",
    ]
    return out, records


def resubmit(sim: Sim, parent_dir: Path, *args: str) -> Result:
    # Only the secret is given: endpoints and state directory are the parent run's.
    return wem_der("resubmit", str(parent_dir), *args, "--client-secret-file", str(sim.secret_file))


def report_json(ref: str, state: Path) -> Any:
    done = wem_der("report", ref, "--format", "json", "--state-dir", str(state))
    assert done.code == 0, done.output
    return orjson.loads(done.stdout)


def test_with_corrections_sends_only_the_corrected_records_and_prints_their_diff(
    sim: Sim, parent: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Two corrected rejections are sent, diffed, and linked to the run they correct."""
    parent_dir, records = parent
    fixed = [copy.deepcopy(records[i]) for i in (PHASES, FUTURE)]
    fixed[0]["installedPhasesCount"] = 1
    fixed[1]["acConnections"][0]["commissioningDate"] = "2024-02-29"
    not_chosen = copy.deepcopy(records[2]) | {"jobNumber": "JOB-X"}  # it was accepted
    corrections = write_jsonl(tmp_path / "fixed.jsonl", [*fixed, not_chosen])
    before = sim.stats()
    out = tmp_path / "fixed-run"

    done = resubmit(
        sim, parent_dir, "--only", "rejected", "--with", str(corrections), "--out", str(out)
    )

    assert done.code == 0, done.output
    after = sim.stats()
    assert after["der_requests_received"] - before["der_requests_received"] == 2
    assert (
        sum(after["requests"]["installation.create"].values())
        - sum(before["requests"]["installation.create"].values())
        == 2
    )
    assert f"corrected {fixed[0]['nmi']}:\n    installedPhasesCount: 3 -> 1\n" in done.stderr
    assert (
        f"corrected {fixed[1]['nmi']}:\n"
        '    acConnections[0].commissioningDate: "2099-01-01" -> "2024-02-29"\n'
    ) in done.stderr
    assert "1 chosen record(s) have no corrected version" in done.stderr
    assert f"match no chosen record of run {run_id_of(parent_dir)}" in done.stderr
    assert not_chosen["nmi"] in done.stderr

    lines = outcome_lines(out)
    assert sorted(line["nmi"] for line in lines) == sorted(r["nmi"] for r in fixed)
    assert {line["outcome"] for line in lines} == {"accepted"}
    assert {line["previous_run_id"] for line in lines} == {run_id_of(parent_dir)}
    assert {line["source"]["path"] for line in lines} == {str(corrections)}
    stored = {record["nmi"]: record for record in sim.installations()}
    assert all(register_holds(stored[r["nmi"]], r) for r in fixed)
    assert stored[not_chosen["nmi"]]["jobNumber"] == records[2]["jobNumber"]

    child = report_json(str(out), tmp_path / "state")
    assert child["run"]["parent_run_id"] == run_id_of(parent_dir)
    assert report_json(str(parent_dir), tmp_path / "state")["run"]["resubmitted_by"] == [
        run_id_of(out)
    ]


def test_without_corrections_exactly_the_chosen_outcomes_are_sent(
    sim: Sim, parent: tuple[Path, list[dict[str, Any]]]
) -> None:
    """Default --only failed,rejected sends the three rejections; --only conditional the one."""
    parent_dir, records = parent
    received = sim.stats()["der_requests_received"]

    again = resubmit(sim, parent_dir)

    assert again.code == 1  # rejected again: they were not corrected
    assert sim.stats()["der_requests_received"] - received == 3
    [out] = parent_dir.parent.glob(f"{parent_dir.name}-resubmit-*")
    rejected = sorted(line["nmi"] for line in outcome_lines(out))
    assert rejected == sorted(records[i]["nmi"] for i in (PHASES, FUTURE, PHASES_TOO))

    received = sim.stats()["der_requests_received"]
    conditional = resubmit(sim, parent_dir, "--only", "conditional")

    assert conditional.code == 0, conditional.output
    # Sent although unchanged: a re-submission is asked for record by record.
    assert sim.stats()["der_requests_received"] - received == 1
    assert sim.stats()["requests"]["installation.update"] == {"200": 1}


def test_bad_requests_are_refused_before_anything_is_sent(
    sim: Sim, parent: tuple[Path, list[dict[str, Any]]]
) -> None:
    """An unknown outcome, or an input changed since the run, is exit 2 and no request."""
    parent_dir, _ = parent
    received = sim.stats()["der_requests_received"]

    unknown = resubmit(sim, parent_dir, "--only", "rejected,bogus")
    inputs = Path(orjson.loads((parent_dir / "run.json").read_bytes())["inputs"][0])
    os.utime(inputs, ns=(0, 0))  # same bytes, but the file is no longer provably the same
    changed = resubmit(sim, parent_dir)

    assert (unknown.code, changed.code) == (2, 2)
    assert "--only: unknown outcome(s) bogus" in unknown.stderr
    assert "changed since run" in changed.stderr
    assert "Traceback" not in unknown.output + changed.output
    assert sim.stats()["der_requests_received"] == received


async def test_a_chosen_record_a_stream_no_longer_gives_is_reported_invalid(
    register: Sim, tmp_path: Path
) -> None:
    """Re-submitted from standard input, which now gives a broken line where a chosen
    record was: that record's outcome is invalid, saying why, and the other chosen
    records are sent."""
    records = batch()
    lines = [orjson.dumps(record) + b"\n" for record in records]
    state = tmp_path / "state"
    async with asyncio.timeout(RUN_TIMEOUT_S):
        parent = await run_cli(
            ["submit", "-", "--out", "nightly", *register.flags(state)], tmp_path, b"".join(lines)
        )
        assert parent.code == 1, parent.stderr
        lines[PHASES] = b'{"nmi": "cut short\n'
        secret = ["--client-secret-file", str(register.secret_file)]
        again = await run_cli(
            ["resubmit", "nightly", "--out", "again", "--state-dir", str(state), *secret],
            tmp_path,
            b"".join(lines),
        )

    assert again.code == 1, again.stderr  # rejected again, and one invalid
    found = read_outcomes(tmp_path / "again")
    [broken] = found["invalid"]
    assert broken["source"] == {"path": "-", "line": PHASES + 1}
    assert "broken JSON" in broken["reason"]
    resent = sorted(line["nmi"] for line in found["rejected"])
    assert resent == sorted(records[i]["nmi"] for i in (FUTURE, PHASES_TOO))
