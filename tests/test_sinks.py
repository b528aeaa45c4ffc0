"""Outcome files: one line per outcome, owner-only, appendable, rebuilt from a ledger."""

from __future__ import annotations

import csv
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.files.private import write_json_atomic
from wem_der.ledger.outcome_files import PROBLEM_COLUMNS, OutcomeSink, outcome_file, rewriting
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.records.shapes import RecordKind

OUTCOME_FILES = sorted(outcome_file(o) for o in Outcome)
ALL_FILES = [*OUTCOME_FILES, "problems.csv", "summary.json"]
# An invalid outcome must say why (OutcomeRecord refuses one that does not).
LOCAL_ERROR = {"code": "local", "title": "Local validation", "path": "nmi", "detail": "missing"}


def outcome(
    result: Outcome,
    nmi: str = "8001000001",
    *,
    line: int = 1,
    errors: list[dict[str, Any]] | None = None,
    exceptions: list[dict[str, Any]] | None = None,
    reason: str | None = None,
) -> OutcomeRecord:
    return OutcomeRecord(
        kind=RecordKind.INSTALLATION,
        nmi=nmi,
        source=SourceRef("in.jsonl", line=line),
        outcome=result,
        transaction_id=f"tx-{nmi}",
        errors=errors or ([LOCAL_ERROR] if result is Outcome.INVALID else []),
        exceptions=exceptions or [],
        reason=reason,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def problems(out: Path) -> list[dict[str, str]]:
    with (out / "problems.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_outcome_is_one_line_in_its_own_file(tmp_path: Path) -> None:
    """Every outcome class goes to `<outcome>.jsonl`, one JSON line each, as written."""
    written = [outcome(o, nmi=f"80010000{i:02d}") for i, o in enumerate(Outcome)]
    written.append(outcome(Outcome.ACCEPTED, nmi="8001000099"))
    with OutcomeSink(tmp_path / "out") as sink:
        for record in written:
            sink.write(record)
    for result in Outcome:
        expected = [r.as_json() for r in written if r.outcome is result]
        assert lines(tmp_path / "out" / outcome_file(result)) == expected


def test_all_files_exist_from_the_start(tmp_path: Path) -> None:
    """The six outcome files and problems.csv (with its header) exist before any write."""
    out = tmp_path / "out"
    with OutcomeSink(out):
        names = sorted(p.name for p in out.iterdir())
        assert names == sorted([*OUTCOME_FILES, "problems.csv"])
        assert all((out / name).stat().st_size == 0 for name in OUTCOME_FILES)
        assert (out / "problems.csv").read_text().splitlines() == [",".join(PROBLEM_COLUMNS)]


def test_a_line_is_on_disk_when_write_returns(tmp_path: Path) -> None:
    """No buffering in the process: another reader sees the line before the sink closes."""
    record = outcome(Outcome.REJECTED, errors=[{"code": 1001, "title": "t", "detail": "d"}])
    with OutcomeSink(tmp_path) as sink:
        sink.write(record)
        assert (tmp_path / "rejected.jsonl").read_bytes() == record.to_line()
        assert len(problems(tmp_path)) == 1


def test_files_and_directory_are_the_owners_alone(tmp_path: Path) -> None:
    """The directory is 0o700 and every file 0o600, summary included."""
    out = tmp_path / "new" / "out"
    with OutcomeSink(out) as sink:
        sink.write(outcome(Outcome.ACCEPTED))
        sink.write_summary({"accepted": 1})
    assert mode(out) == 0o700
    assert {p.name: mode(p) for p in out.iterdir()} == dict.fromkeys(ALL_FILES, 0o600)


def test_append_adds_to_the_files_and_writes_the_header_once(tmp_path: Path) -> None:
    """A resumed run adds its lines after the old ones; problems.csv keeps one header."""
    first = outcome(Outcome.REJECTED, "8001000001", reason="no")
    second = outcome(Outcome.REJECTED, "8001000002", reason="no")
    with OutcomeSink(tmp_path) as sink:
        sink.write(first)
    with OutcomeSink(tmp_path, append=True) as sink:
        sink.write(second)
    assert lines(tmp_path / "rejected.jsonl") == [first.as_json(), second.as_json()]
    assert [row["nmi"] for row in problems(tmp_path)] == ["8001000001", "8001000002"]


def test_without_append_old_files_are_emptied(tmp_path: Path) -> None:
    """A fresh run into a used directory starts its files empty."""
    with OutcomeSink(tmp_path) as sink:
        sink.write(outcome(Outcome.REJECTED, reason="old"))
    with OutcomeSink(tmp_path):
        pass
    assert (tmp_path / "rejected.jsonl").read_bytes() == b""
    assert problems(tmp_path) == []


def test_problem_rows_for_errors_and_exceptions(tmp_path: Path) -> None:
    """One row per error or exception of rejected and conditional records; none for others."""
    rejected = outcome(
        Outcome.REJECTED,
        "8001000001",
        line=4,
        errors=[
            {"code": 1001, "title": "Invalid", "detail": "exportLimitkW too high"},
            {"code": "1002", "title": "Missing", "detail": "jobNumber"},
        ],
    )
    # AEMO's second-level exceptions follow the NEM shape: name and details.
    conditional = outcome(
        Outcome.CONDITIONAL,
        "8001000002",
        line=9,
        exceptions=[{"exceptionId": 7, "code": 2023, "name": "Check", "details": "stage"}],
    )
    bare = outcome(Outcome.REJECTED, "8001000003", reason="HTTP 422 without a body")
    with OutcomeSink(tmp_path) as sink:
        for record in [rejected, outcome(Outcome.ACCEPTED), conditional, bare]:
            sink.write(record)
        assert sink.counts == {
            "accepted": 1,
            "conditional": 1,
            "rejected": 2,
            "invalid": 0,
            "failed": 0,
            "skipped": 0,
        }
    rows = [tuple(row.values()) for row in problems(tmp_path)]
    assert rows == [
        ("8001000001", "rejected", "1001", "Invalid", "exportLimitkW too high", *where(1, 4)),
        ("8001000001", "rejected", "1002", "Missing", "jobNumber", *where(1, 4)),
        ("8001000002", "conditional", "2023", "Check", "stage", *where(2, 9)),
        ("8001000003", "rejected", "", "", "HTTP 422 without a body", *where(3, 1)),
    ]


def where(n: int, line: int) -> tuple[str, str, str]:
    """The transaction id and source columns of the record made for NMI 800100000n."""
    return (f"tx-800100000{n}", "in.jsonl", str(line))


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)"])
def test_spreadsheet_formulas_are_defused(tmp_path: Path, text: str) -> None:
    """A cell that a spreadsheet would run as a formula is prefixed with a quote."""
    record = outcome(Outcome.REJECTED, errors=[{"code": text, "title": text, "detail": text}])
    with OutcomeSink(tmp_path) as sink:
        sink.write(record)
    (row,) = problems(tmp_path)
    assert (row["code"], row["title"], row["detail"]) == ("'" + text,) * 3


def test_plain_values_are_left_alone(tmp_path: Path) -> None:
    """Text that is no formula, commas and quotes included, comes back exactly."""
    detail = 'value "x", 1=1 and, on the same line, more'
    record = outcome(Outcome.REJECTED, errors=[{"code": 1, "title": "T", "detail": detail}])
    with OutcomeSink(tmp_path) as sink:
        sink.write(record)
    (row,) = problems(tmp_path)
    assert row["detail"] == detail


def test_write_outside_the_with_block_is_refused(tmp_path: Path) -> None:
    """A sink that is not open says so instead of failing obscurely."""
    sink = OutcomeSink(tmp_path)
    with pytest.raises(RuntimeError, match="outside its with-block"):
        sink.write(outcome(Outcome.ACCEPTED))


def test_summary_is_written_whole(tmp_path: Path) -> None:
    """summary.json holds the mapping as indented JSON, with no temporary file left over."""
    summary = {"run_id": "r1", "counts": {"accepted": 2}}
    with OutcomeSink(tmp_path) as sink:
        sink.write_summary(summary)
        sink.write_summary(summary | {"run_id": "r2"})
    text = (tmp_path / "summary.json").read_bytes()
    assert orjson.loads(text) == summary | {"run_id": "r2"}
    assert text.startswith(b'{\n  "run_id"')
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ALL_FILES)


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    """If the new content cannot be written, the old file stays and no temporary remains."""
    path = tmp_path / "run.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})
    assert orjson.loads(path.read_bytes()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert mode(path) == 0o600


def test_rewrite_makes_the_files_match_the_given_outcomes(tmp_path: Path) -> None:
    """Old lines go; the files and problems.csv hold exactly the outcomes given, owner-only."""
    with OutcomeSink(tmp_path) as sink:
        sink.write(outcome(Outcome.FAILED, "8001000009"))
        sink.write(outcome(Outcome.REJECTED, "8001000009", reason="stale"))
        sink.write_summary({"kept": True})
    kept = [
        outcome(Outcome.ACCEPTED, "8001000001"),
        outcome(Outcome.REJECTED, "8001000002", reason="no"),
    ]

    with rewriting(tmp_path) as sink:
        for item in kept:
            sink.write(item)
    counts = sink.counts

    assert counts["accepted"] == 1
    assert counts["rejected"] == 1
    assert counts["failed"] == 0
    assert lines(tmp_path / "accepted.jsonl") == [kept[0].as_json()]
    assert lines(tmp_path / "rejected.jsonl") == [kept[1].as_json()]
    assert (tmp_path / "failed.jsonl").read_bytes() == b""
    assert [row["nmi"] for row in problems(tmp_path)] == ["8001000002"]
    assert orjson.loads((tmp_path / "summary.json").read_bytes()) == {"kept": True}
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(ALL_FILES, 0o600)
