"""`wem-der report`: outcome counts, problem-code histograms, quota use, an NMI's history."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord, SourceRef
from wem_der.records.samples import installations
from wem_der.records.shapes import RecordKind
from wem_der.report.collect import collect, latest_followup, quota_use, render
from wem_der.report.text import table
from wem_der.testing import VirtualClock

from tests.e2e import write_jsonl
from tests.processes import Sim, run_id_of, wem_der

INST = RecordKind.INSTALLATION
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def result(
    seq: int,
    outcome: Outcome,
    *,
    run_id: str = "r1",
    errors: list[dict[str, Any]] | None = None,
    exceptions: list[dict[str, Any]] | None = None,
    reason: str | None = None,
    txn: str | None = None,
) -> OutcomeRecord:
    return OutcomeRecord(
        kind=INST,
        nmi=f"800100000{seq}",
        source=SourceRef("in.jsonl", line=seq + 1),
        outcome=outcome,
        action=Action.CREATE,
        http_status=422 if outcome is Outcome.REJECTED else 200,
        transaction_id=txn,
        errors=errors or [],
        exceptions=exceptions or [],
        reason=reason,
        content_hash=f"{seq:064d}",
        run_id=run_id,
    )


def error(code: str, title: str) -> dict[str, Any]:
    return {"code": code, "title": title, "detail": "..."}


async def fill(ledger: Ledger, clock: VirtualClock) -> None:
    """Run r1 (quota 3/60s): six records, attempts over three windows; r2 re-submits one."""
    await ledger.start_run(
        run_id="r1",
        kind="installation",
        out_dir="/out/r1",
        inputs=["/in/nightly.jsonl"],
        settings={"plan": {}, "settings": {"rate_limit": "3/60s"}},
    )
    for seq, offset in enumerate((0, 1, 2, 61, 62, 200)):
        clock.jump(T0 + offset - clock())
        attempt = await ledger.begin_attempt(
            run_id="r1",
            seq=seq,
            kind="installation",
            nmi=f"800100000{seq}",
            action="create",
            content_hash=f"{seq:064d}",
        )
        # The second attempt was answered 429 (and the record tried again later).
        status = 429 if seq == 1 else 200
        ledger.finish_attempt(attempt, http_status=status, transaction_id=f"T{seq}")
    clock.jump(T0 + 300 - clock())
    rejected_1012 = [error("1012", "Installed phases exceed available phases")]
    for seq, outcome in enumerate(
        (
            result(0, Outcome.ACCEPTED, txn="T0"),
            result(1, Outcome.REJECTED, errors=rejected_1012),
            result(2, Outcome.REJECTED, errors=[*rejected_1012, error("1010", "Future date")]),
            result(
                3,
                Outcome.CONDITIONAL,
                txn="T3",
                exceptions=[{"code": "2024", "name": "Export limit"}] * 2,
            ),
            result(4, Outcome.INVALID, errors=[error("local", "acConnections[0].count")]),
            result(5, Outcome.FAILED, reason="retry budget spent; last: HTTP 503"),
        )
    ):
        ledger.record_outcome("r1", seq, outcome)
    await ledger.finish_run("r1", status="finished", summary={"requests": 6, "http_429": 0})
    clock.jump(T0 + 4000 - clock())
    await ledger.start_run(
        run_id="r2",
        kind="installation",
        out_dir="/out/r2",
        inputs=["/in/nightly.jsonl"],
        settings={},
        parent_run_id="r1",
    )
    attempt = await ledger.begin_attempt(
        run_id="r2",
        seq=1,
        kind="installation",
        nmi="8001000001",
        action="create",
        content_hash="f" * 64,
    )
    ledger.finish_attempt(attempt, http_status=200, transaction_id="T9")
    ledger.record_outcome("r2", 1, result(1, Outcome.ACCEPTED, run_id="r2", txn="T9"))
    await ledger.flush()


@pytest.fixture
async def ledger(tmp_path: Path) -> Any:
    clock = VirtualClock(start=T0)  # the ledger's wall clock, moved before each write
    async with asyncio.timeout(10), Ledger(tmp_path / "ledger.sqlite3", clock=clock) as opened:
        await fill(opened, clock)
        yield opened


async def test_a_run_report_counts_outcomes_codes_and_quota_windows(ledger: Ledger) -> None:
    """Outcomes, error and exception histograms and quota windows come from the ledger."""
    async with asyncio.timeout(10):
        report = await collect(ledger, run_id="r1", nmi=None, kind=INST)
    assert report["run"]["status"] == "finished"
    assert report["run"]["resubmitted_by"] == ["r2"]
    assert report["run"]["summary"] == {"requests": 6, "http_429": 0}
    assert report["outcomes"] == {
        "accepted": 1,
        "conditional": 1,
        "rejected": 2,
        "invalid": 1,
        "failed": 1,
        "skipped": 0,
    }
    phases = "Installed phases exceed available phases"

    def example(seq: int, status: int, txn: str | None = None) -> dict[str, Any]:
        """The first record with the code, in input order."""
        return {
            "nmi": f"800100000{seq}",
            "source": {"path": "in.jsonl", "line": seq + 1},
            "http_status": status,
            "transaction_id": txn,
        }

    assert report["errors"] == [
        {"outcome": "rejected", "code": "1012", "title": phases, "count": 2}
        | {"example": example(1, 422)},
        {
            "outcome": "failed",
            "code": "-",
            "title": "retry budget spent; last: HTTP 503",
            "count": 1,
            "example": example(5, 200),
        },
        {"outcome": "invalid", "code": "local", "title": "acConnections[0].count", "count": 1}
        | {"example": example(4, 200)},
        {"outcome": "rejected", "code": "1010", "title": "Future date", "count": 1}
        | {"example": example(2, 422)},
    ]
    assert report["exceptions"] == [
        {"code": "2024", "name": "Export limit", "count": 2, "example": example(3, 200, "T3")}
    ]
    quota = report["quota"]
    assert (quota["count"], quota["period_s"], quota["attempts"]) == (3, 60.0, 6)
    assert quota["fullest_window"] == 3
    assert quota["windows"] == [
        {"start": "2027-01-15T08:00:00Z", "attempts": 3, "http_429": 1},
        {"start": "2027-01-15T08:01:00Z", "attempts": 2, "http_429": 0},
        {"start": "2027-01-15T08:03:00Z", "attempts": 1, "http_429": 0},
    ]
    assert report["followup"] is None  # /out/r1 holds no followup.jsonl
    assert "nmi" not in report


async def test_the_text_report_shows_the_tables(ledger: Ledger) -> None:
    """People get aligned tables; the JSON form holds the same data."""
    async with asyncio.timeout(10):
        text = await render(ledger, run_id="r1", nmi="8001000001", kind=INST)
        as_json = await render(ledger, run_id="r1", nmi="8001000001", kind=INST, fmt="json")
        data = await collect(ledger, run_id="r1", nmi="8001000001", kind=INST)
    assert orjson.loads(as_json) == data
    assert "run r1" in text
    assert "\n  re-submitted by       r2\n" in text
    assert "\n  rejected           2  ####" in text
    assert "        2  rejected  1012   Installed phases exceed available phases" in text
    assert "           2  2024  Export limit" in text
    assert "fullest 60 s window 3 (100.0% of the quota)" in text
    assert "\n  2027-01-15T08:01:00Z         2     66.7%  ####" in text
    assert "history of installation NMI 8001000001" in text
    assert "\nfollow-up of the conditional records: none yet (wem-der followup r1)\n" in text


async def test_an_nmi_history_spans_runs_oldest_first(ledger: Ledger) -> None:
    """Every attempt and outcome of the NMI, in time order, and its last success."""
    async with asyncio.timeout(10):
        report = await collect(ledger, run_id=None, nmi="8001000001", kind=INST)
    history = report["nmi"]
    assert "run" not in report
    assert history["exists_at_register"] is True
    assert history["last_success"]["run_id"] == "r2"
    assert history["last_success"]["transaction_id"] == "T9"
    assert [(e["run_id"], e["event"], e["outcome"]) for e in history["events"]] == [
        ("r1", "attempt", None),
        ("r1", "outcome", "rejected"),
        ("r2", "attempt", None),
        ("r2", "outcome", "accepted"),
    ]


async def test_an_unknown_nmi_and_an_unknown_run(ledger: Ledger) -> None:
    """An NMI never sent has no history; a run not in the ledger is a ConfigError."""
    from wem_der.errors import ConfigError

    async with asyncio.timeout(10):
        report = await collect(ledger, run_id=None, nmi="6000000000", kind=INST)
        assert report["nmi"]["events"] == []
        assert "no attempt or outcome recorded" in await render(
            ledger, run_id=None, nmi="6000000000", kind=INST
        )
        with pytest.raises(ConfigError, match="no run 'r404'"):
            await collect(ledger, run_id="r404", nmi=None, kind=INST)


def test_quota_use_counts_periods_and_the_fullest_sliding_window() -> None:
    """Fixed periods from the first attempt, empty ones left out; the sliding maximum."""
    use = quota_use([10.0, 40.0, 69.0, 71.0, 99.0, 500.0], "4/60s")
    assert [w["attempts"] for w in use["windows"]] == [3, 2, 1]
    assert use["fullest_window"] == 4  # 40, 69, 71, 99 lie within 60 s
    assert quota_use([], "6000/60s")["fullest_window"] == 0


def test_table_aligns_numbers_right_and_text_left() -> None:
    """Numeric columns right-aligned, text left, no trailing spaces."""
    assert table(("name", "n"), [("a", 5), ("bbb", 100)]) == (
        "  name    n\n  a       5\n  bbb   100"
    )


def test_the_report_command_on_real_runs(sim: Sim, tmp_path: Path) -> None:
    """`report DIR`, `report RUN_ID --format json` and `report --nmi` from the CLI."""
    records = list(installations(10, seed=2, start=900))
    records[4]["installedPhasesCount"] = 3  # rejected, rule 1012
    inputs = write_jsonl(tmp_path / "in.jsonl", records)
    state = tmp_path / "state"
    for out in ("mon", "tue"):
        sent = wem_der("submit", str(inputs), "--out", str(tmp_path / out), *sim.flags(state))
        assert sent.code == 1, sent.output  # the rejected record, sent both times
    mon = run_id_of(tmp_path / "mon")
    nmi = records[0]["nmi"]

    text = wem_der("report", str(tmp_path / "mon"))  # the directory knows its ledger
    as_json = wem_der("report", mon, "--format", "json", "--state-dir", str(state))
    history = wem_der("report", "--nmi", nmi, "--state-dir", str(state), "--format", "json")
    neither = wem_der("report", "--state-dir", str(state))

    assert (text.code, as_json.code, history.code, neither.code) == (0, 0, 0, 2)
    assert f"run {mon}\n" in text.stdout
    assert "  rejected  1012  Installed phases exceed available phases" in text.stdout
    data = orjson.loads(as_json.stdout)
    assert (data["outcomes"]["accepted"], data["outcomes"]["rejected"]) == (9, 1)
    assert data["quota"]["attempts"] == 10
    events = orjson.loads(history.stdout)["nmi"]["events"]
    assert [(e["event"], e["outcome"]) for e in events] == [
        ("attempt", None),
        ("outcome", "accepted"),
        ("outcome", "skipped"),
    ]
    assert "report needs a RUN_ID" in neither.stderr


async def test_a_run_that_never_ended_points_at_resume(ledger: Ledger) -> None:
    """A run the ledger holds as running may have been killed: the report says how to go on."""
    async with asyncio.timeout(10):
        text = await render(ledger, run_id="r2", nmi=None, kind=INST)
    assert "\n  status          running, or killed (then: wem-der resume r2)\n" in text
    assert "\n  re-submits run  r1\n" in text


def test_the_latest_followup_is_counted_with_its_exception_codes(tmp_path: Path) -> None:
    """followup.jsonl is read with a count per status (a line without one counts by its
    `confirmed`), its exception codes most frequent first, and when it was read: its
    earliest `read_at`."""
    lines = [
        {"nmi": "1", "status": "conditional", "read_at": "2027-01-15T08:00:09.5+00:00"}
        | {"exceptions": [{"code": "2024", "name": "Export", "path": "(record)"}]},
        {"nmi": "2", "status": "missing", "read_at": "2027-01-15T08:00:07+00:00"},
        {"nmi": "3", "status": "error", "read_at": "2027-01-15T08:00:08+00:00"},
        {"nmi": "4", "confirmed": True, "exceptions": []},
        {"nmi": "5", "confirmed": False, "exceptions": [{"code": "2024", "name": "Export"}]}
        | {"read_at": "not a time"},
        {"nmi": "6", "status": "conditional", "exceptions": [{"code": "2040"}, "odd"]},
    ]
    write_jsonl(tmp_path / "followup.jsonl", lines)
    found = latest_followup(tmp_path)
    assert found is not None
    assert found["counts"] == {"conditional": 3, "confirmed": 1, "missing": 1, "error": 1}
    assert found["exceptions"] == [
        {"code": "2024", "name": "Export", "count": 2},
        {"code": "2040", "name": "-", "count": 1},
    ]
    assert found["read_at"] == "2027-01-15T08:00:07Z"
    assert found["records"] == lines
    assert latest_followup(tmp_path / "none") is None
