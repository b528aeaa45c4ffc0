"""submit, end to end: each outcome class, the outcome lines, summary.json and problems.csv."""

from __future__ import annotations

import asyncio
import copy
import gzip
import time
from pathlib import Path
from typing import Any

import orjson
from wem_der.send.reconcile import is_conditional
from wem_der.simulator import FaultProfile, Simulator

from tests.e2e import (
    SUMMARY_KEYS,
    Tap,
    assert_each_once,
    lines_of,
    read_problems,
    read_summary,
    records,
    run_settings,
    sim_settings,
    submit,
    write_jsonl,
)


def _conditional(base: dict[str, Any], code: str) -> dict[str, Any]:
    """A record that breaks the simulator's second-level rule `code` (data/rules.toml)."""
    rec = copy.deepcopy(base)
    connection = rec["acConnections"][0]
    if code == "2023":  # an inverter model off the approved list
        connection["details"]["modelNumber"] = "UNAPPROVED-5K"
    elif code == "2024":  # export limit above approved capacity
        rec["exportLimitkW"] = rec["approvedCapacity"] + 1
    elif code == "2040":  # a device bigger than its connection
        device = connection["devices"][0]["details"]
        device["nominalRatedCapacity"] = connection["equipmentInjectionCapacity"] + 1
    return rec


def _mixed_input(tmp_path: Path) -> tuple[Path, dict[int, tuple[str, str | None]]]:
    """A file with every outcome but failed: line -> (outcome, the code it must carry)."""
    good = records(12)
    lines: list[bytes] = []
    expect: dict[int, tuple[str, str | None]] = {}

    def add(item: object, outcome: str, code: str | None = None) -> None:
        lines.append(item if isinstance(item, bytes) else orjson.dumps(item))
        expect[len(lines)] = (outcome, code)

    for rec in good[:4]:
        add(rec, "accepted")
    for rec, code in zip(good[4:7], ("2023", "2024", "2040"), strict=True):
        add(_conditional(rec, code), "conditional", code)
    phases = copy.deepcopy(good[7])
    phases.update(availablePhasesCount=1, installedPhasesCount=3)
    add(phases, "rejected", "1012")
    future = copy.deepcopy(good[8])
    future["acConnections"][0]["commissioningDate"] = "2999-01-01"
    add(future, "rejected", "1010")
    typo = copy.deepcopy(good[9])
    typo["jobNumbr"] = typo.pop("jobNumber")
    add(typo, "invalid", "jobNumbr")
    wrong_type = copy.deepcopy(good[10])
    wrong_type["availablePhasesCount"] = "three"
    add(wrong_type, "invalid", "availablePhasesCount")
    add(b'{"nmi": "8001999999", "jobNumber": ', "invalid", "(record)")
    # Valid field by field, but its request body would be over AEMO's 10 MB [doc].
    huge = copy.deepcopy(good[11])
    huge["comments"] = "x" * (10 * 2**20)
    add(huge, "invalid", None)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expect


async def test_every_outcome_class_lands_in_its_own_file(tmp_path: Path, tap: Tap) -> None:
    """Accepted, conditional, rejected and invalid records: one line each, in the right file."""
    async with asyncio.timeout(30):
        path, expect = _mixed_input(tmp_path)
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            result = await submit(run_settings(sim, tmp_path), tmp_path, [path])
            stats = sim.stats()
        out = result.out_dir
        found = assert_each_once(out, lines_of(path, len(expect)))

        by_line = {line["source"]["line"]: line for lines in found.values() for line in lines}
        for number, (outcome, code) in expect.items():
            line = by_line[number]
            assert line["outcome"] == outcome, (number, line)
            assert line["source"]["path"] == str(path)
            assert line["run_id"] == result.run_id
            if outcome == "conditional":
                assert [e["code"] for e in line["exceptions"]] == [code]
            if outcome == "rejected":
                assert line["http_status"] == 422
                assert [e["code"] for e in line["errors"]] == [code]
            if outcome == "invalid":
                assert line["attempts"] == 0
                assert line["http_status"] is None
                assert line["transaction_id"] is None
            if outcome == "invalid" and code is not None:
                assert [e["path"] for e in line["errors"]] == [code]

        assert "did you mean 'jobNumber'" in by_line[10]["reason"]
        assert "10485760 bytes" in by_line[13]["reason"]

        # Only pre-flighted records cost a request: 4 + 3 + 2, the 10 MB body none.
        writes = tap.writes()
        assert len(writes) == 9
        assert all(e.method == "POST" for e in writes)
        assert stats["requests"]["installation.create"] == {"200": 7, "422": 2}
        sent = {e.nmi: e for e in writes}
        for line in [*found["accepted"], *found["conditional"], *found["rejected"]]:
            exchange = sent[line["nmi"]]
            # The id the register returned for this very request, and its status.
            assert line["transaction_id"] == exchange.transaction_id
            assert line["transaction_id"]
            assert line["http_status"] == exchange.status
            assert line["action"] == "create"
            assert line["attempts"] == 1
            assert line["nmi"] == exchange.decoded()["data"]["nmi"]
        for line in found["accepted"]:
            assert line["errors"] == []
            assert line["exceptions"] == []


async def test_conditional_records_are_stored_and_flagged(tmp_path: Path) -> None:
    """A second-level exception is a success: the record is stored, its stage Conditional."""
    async with asyncio.timeout(30):
        base = records(3)
        recs = [_conditional(r, c) for r, c in zip(base, ("2023", "2024", "2040"), strict=True)]
        path = write_jsonl(tmp_path / "in.jsonl", recs)
        async with Simulator(sim_settings()) as sim:
            result = await submit(run_settings(sim, tmp_path), tmp_path, [path])
            stored = {r["nmi"]: sim.store.installation(r["nmi"]) for r in recs}
        found = assert_each_once(result.out_dir, lines_of(path, 3))
        assert len(found["conditional"]) == 3
        for line in found["conditional"]:
            version = stored[line["nmi"]]
            assert version is not None
            assert is_conditional(version.record)
            # The exceptions in the outcome line are those the register keeps.
            assert line["exceptions"] == version.exceptions
        assert result.exit_code == 0


async def test_summary_and_problems_csv(tmp_path: Path) -> None:
    """summary.json counts every class and the requests; problems.csv has a row per problem."""
    async with asyncio.timeout(30):
        path, expect = _mixed_input(tmp_path)
        async with Simulator(sim_settings()) as sim:
            began = time.monotonic()
            result = await submit(run_settings(sim, tmp_path), tmp_path, [path])
            took = time.monotonic() - began
            stats = sim.stats()
        summary = read_summary(result.out_dir)
        assert summary.keys() >= SUMMARY_KEYS
        assert summary["status"] == "finished"
        assert summary["records"] == len(expect) == 13
        expected = {"accepted": 4, "conditional": 3, "rejected": 2, "invalid": 4, "failed": 0}
        assert {o: summary[o] for o in expected} == expected
        assert summary["requests"] == stats["der_requests_received"] == 9
        assert summary["http_429"] == 0
        assert 1 <= summary["max_requests_in_window"] <= 9
        # The run's duration in seconds, to the millisecond: nine HTTP requests and a ledger
        # take more than the half millisecond that rounds to 0, and fit in the call's time.
        assert 0 < summary["elapsed_s"] <= round(took, 3) + 0.001
        assert result.exit_code == 1  # rejected and invalid records

        rows = read_problems(result.out_dir)
        problems = sorted((r["outcome"], r["code"], int(r["source_line"])) for r in rows)
        assert problems == [
            ("conditional", "2023", 5),
            ("conditional", "2024", 6),
            ("conditional", "2040", 7),
            ("rejected", "1010", 9),
            ("rejected", "1012", 8),
        ]
        found = assert_each_once(result.out_dir, lines_of(path, len(expect)))
        txn = {line["source"]["line"]: line["transaction_id"] for line in found["rejected"]}
        txn |= {line["source"]["line"]: line["transaction_id"] for line in found["conditional"]}
        for row in rows:
            assert row["transaction_id"] == txn[int(row["source_line"])]
            assert row["source_path"] == str(path)
            assert row["title"]
            assert row["detail"]


async def test_failed_when_the_retry_budget_is_spent(tmp_path: Path) -> None:
    """A register that answers 503 to everything: each record fails after max_attempts."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(5))
        faults = FaultProfile(error_rate_503=1.0)
        async with Simulator(sim_settings(faults=faults)) as sim:
            # The breaker kept shut (it would wait the outage out): each record's own
            # budget is the question here.
            settings = run_settings(sim, tmp_path, max_attempts=3, outage_after=1000)
            result = await submit(settings, tmp_path, [path])
            stats = sim.stats()
            stored = stats["installations"]
        found = assert_each_once(result.out_dir, lines_of(path, 5))
        assert len(found["failed"]) == 5
        for line in found["failed"]:
            assert line["attempts"] == 3
            assert line["http_status"] == 503
            assert line["reason"] == "retry budget spent; last: HTTP 503"
            assert line["transaction_id"]  # the last 503's id, for AEMO support
        assert stats["requests"]["installation.create"] == {"503": 15}
        assert stored == 0
        summary = read_summary(result.out_dir)
        assert (summary["failed"], summary["requests"], summary["not_sent"]) == (5, 15, 0)
        assert result.exit_code == 1


async def test_inputs_gz_json_array_and_several_paths(tmp_path: Path) -> None:
    """A .gz JSONL file and a JSON array file in one run; each record keeps its own source."""
    async with asyncio.timeout(30):
        recs = records(7)
        gz = tmp_path / "a.jsonl.gz"
        gz.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in recs[:4])))
        array = tmp_path / "b.json"
        array.write_bytes(orjson.dumps(recs[4:]))
        async with Simulator(sim_settings()) as sim:
            result = await submit(run_settings(sim, tmp_path), tmp_path, [gz, array])
            held = sim.stats()["installations"]
        # The array is on one line: its records are told apart by their index.
        expected = [*lines_of(gz, 4), *[(str(array), 1, i) for i in range(3)]]
        found = assert_each_once(result.out_dir, expected)
        assert len(found["accepted"]) == 7
        by_nmi = {line["nmi"]: line["source"] for line in found["accepted"]}
        assert by_nmi[recs[0]["nmi"]] == {"path": str(gz), "line": 1}
        assert by_nmi[recs[6]["nmi"]] == {"path": str(array), "line": 1, "index": 2}
        assert held == 7
