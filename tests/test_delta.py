"""Deltas: `submit` sends a record only if it changed since its last accepted submission.

Against a simulator process without faults, so that every request count is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wem_der.records.samples import installations

from tests.e2e import read_summary, write_jsonl
from tests.processes import Sim, outcome_lines, run_id_of, wem_der

COUNT = 40


def batch(**changes: Any) -> list[dict[str, Any]]:
    records = list(installations(COUNT, seed=5, start=500))
    for record in records:
        record.update(changes)
    # One record the register accepts with an exception (exportLimitkW above
    # approvedCapacity, rule 2024): conditional counts as sent, like accepted.
    records[0]["exportLimitkW"] = records[0]["approvedCapacity"] + 5
    return records


def submit(sim: Sim, path: Path, out: Path, state: Path, *extra: str) -> dict[str, Any]:
    done = wem_der("submit", str(path), "--out", str(out), *sim.flags(state), *extra)
    assert done.code == 0, done.output
    return read_summary(out)


def test_an_unchanged_nightly_rerun_sends_no_request(register: Sim, tmp_path: Path) -> None:
    """Every record skipped, pointing at the run and transaction that sent it."""
    nightly = write_jsonl(tmp_path / "nightly.jsonl", batch())
    state = tmp_path / "state"
    first = submit(register, nightly, tmp_path / "mon", state)
    assert (first["accepted"], first["conditional"]) == (COUNT - 1, 1)
    sent = {line["nmi"]: line for line in outcome_lines(tmp_path / "mon")}
    received = register.stats()["der_requests_received"]

    again = submit(register, nightly, tmp_path / "tue", state)

    assert register.stats()["der_requests_received"] == received
    assert (again["requests"], again["skipped"], again["records"]) == (0, COUNT, COUNT)
    skipped = (tmp_path / "tue" / "skipped.jsonl").read_bytes().splitlines()
    assert len(skipped) == COUNT
    for line in outcome_lines(tmp_path / "tue"):
        assert line["outcome"] == "skipped"
        assert line["previous_run_id"] == run_id_of(tmp_path / "mon")
        assert line["previous_transaction_id"] == sent[line["nmi"]]["transaction_id"]
        assert line["previous_transaction_id"]


def test_only_the_changed_records_are_sent(register: Sim, tmp_path: Path) -> None:
    """Three changed records cost three requests (updates); the rest are skipped."""
    state = tmp_path / "state"
    submit(register, write_jsonl(tmp_path / "mon.jsonl", batch()), tmp_path / "mon", state)
    records = batch()
    for record in records[5:8]:
        record["jobNumber"] = "JOB-CHANGED"
    before = register.stats()
    changed = write_jsonl(tmp_path / "tue.jsonl", records)

    summary = submit(register, changed, tmp_path / "tue", state)

    after = register.stats()
    assert after["der_requests_received"] - before["der_requests_received"] == 3
    assert after["requests"]["installation.update"] == {"200": 3}
    assert (summary["accepted"], summary["skipped"]) == (3, COUNT - 3)
    accepted = outcome_lines(tmp_path / "tue")
    assert sorted(line["nmi"] for line in accepted if line["outcome"] == "accepted") == sorted(
        record["nmi"] for record in records[5:8]
    )
    stored = {record["nmi"]: record for record in register.installations()}
    assert {stored[record["nmi"]]["jobNumber"] for record in records[5:8]} == {"JOB-CHANGED"}


def test_force_sends_every_record(register: Sim, tmp_path: Path) -> None:
    """--force sends unchanged records too."""
    nightly = write_jsonl(tmp_path / "nightly.jsonl", batch())
    state = tmp_path / "state"
    submit(register, nightly, tmp_path / "mon", state)
    received = register.stats()["der_requests_received"]

    forced = submit(register, nightly, tmp_path / "tue", state, "--force")

    assert register.stats()["der_requests_received"] - received == COUNT
    assert forced["skipped"] == 0
    assert forced["accepted"] + forced["conditional"] == COUNT


def test_a_rejected_record_is_sent_again_unchanged(register: Sim, tmp_path: Path) -> None:
    """Only accepted and conditional submissions are a reference; a rejection is not."""
    records = batch()
    records[3]["installedPhasesCount"] = 3  # above availablePhasesCount 1: rule 1012
    nightly = write_jsonl(tmp_path / "nightly.jsonl", records)
    state = tmp_path / "state"
    first = wem_der("submit", str(nightly), "--out", str(tmp_path / "mon"), *register.flags(state))
    assert first.code == 1  # a rejected record
    received = register.stats()["der_requests_received"]

    # The ledger plans (a plan from the register would also read it first).
    tue = tmp_path / "tue"
    plan = ("--plan", "ledger")
    again = wem_der("submit", str(nightly), "--out", str(tue), *register.flags(state), *plan)

    assert again.code == 1
    assert register.stats()["der_requests_received"] - received == 1
    [rejected] = [line for line in outcome_lines(tmp_path / "tue") if line["outcome"] != "skipped"]
    assert (rejected["nmi"], rejected["outcome"]) == (records[3]["nmi"], "rejected")


def test_a_new_ledger_knows_nothing_and_sends_everything(register: Sim, tmp_path: Path) -> None:
    """The skip comes from the ledger: another state directory sends (as updates)."""
    nightly = write_jsonl(tmp_path / "nightly.jsonl", batch())
    submit(register, nightly, tmp_path / "mon", tmp_path / "state-a")
    received = register.stats()["der_requests_received"]

    # The ledger alone plans: from the register, every record would be skipped.
    other = submit(register, nightly, tmp_path / "tue", tmp_path / "state-b", "--plan", "ledger")

    # A create each, refused as existing (1001), then the update: two requests a record.
    assert register.stats()["der_requests_received"] - received == 2 * COUNT
    assert other["skipped"] == 0
    assert register.stats()["installation_versions"] == 2 * COUNT
