"""What a re-submission sends (`plan_items`): the chosen records of an earlier run, read
again from its inputs, against a real ledger and real files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.errors import InputError
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceItem, SourceRef
from wem_der.records.shapes import RecordKind
from wem_der.run.plan import RunPlan, plan_items

from tests.e2e import records, write_jsonl

TIMEOUT_S = 10.0
PARENT = "parent"


def _line(record: object) -> bytes:
    return orjson.dumps(record) + b"\n"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    async with Ledger(tmp_path / "state" / "ledger.sqlite3") as opened:
        yield opened


async def _rejected_all(ledger: Ledger, path: str, recs: list[dict[str, Any]]) -> None:
    """A parent run that read `recs` from `path` and had every one rejected."""
    kind = RecordKind.INSTALLATION
    await ledger.start_run(
        run_id=PARENT, kind=kind.value, out_dir="out", inputs=[path], settings={}
    )
    for seq, rec in enumerate(recs):
        outcome = OutcomeRecord(kind, rec["nmi"], SourceRef(path, line=seq + 1), Outcome.REJECTED)
        ledger.record_outcome(PARENT, seq, outcome)
    await ledger.flush()


def _resubmission(path: str, corrected: str | None = None) -> RunPlan:
    return RunPlan(
        run_id="child",
        kind=RecordKind.INSTALLATION,
        inputs=(path,),
        out_dir="again",
        parent_run_id=PARENT,
        only=("rejected",),
        corrected=corrected,
    )


def _no_diff(nmi: str, changes: list[str]) -> None:
    raise AssertionError(f"no correction was expected, got one for {nmi}: {changes}")


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A named pipe, and a descriptor that holds it open for writing as a producer would."""
    path = tmp_path / "p"
    os.mkfifo(path)
    # Read and write: a write-only open would wait for a reader.
    writer = os.open(path, os.O_RDWR)
    try:
        yield path, writer
    finally:
        os.close(writer)


async def test_a_stream_left_at_a_stop_on_a_chosen_record_is_handed_on(
    ledger: Ledger, fifo: tuple[Path, int]
) -> None:
    """Stopped while the stream is idle, where the next chosen record was due: the place
    it was left goes on to be reported, with why, instead of being refused as an input
    that changed."""
    path, writer = fifo
    recs = records(3)
    await _rejected_all(ledger, str(path), recs)
    stop = asyncio.Event()
    items = plan_items(_resubmission(str(path)), ledger, on_diff=_no_diff, stop=stop)
    async with asyncio.timeout(TIMEOUT_S):
        os.write(writer, _line(recs[0]))
        seq, first = await anext(items)
        stop.set()
        rest = [pair async for pair in items]
    assert (seq, first.value) == (0, recs[0])
    [(left_seq, left)] = rest
    assert left_seq == 1
    assert left.source == SourceRef(str(path), line=2)
    assert left.error is not None
    assert "nothing was read after line 1" in left.error


@pytest.mark.parametrize("with_corrections", [False, True])
async def test_a_chosen_line_that_no_longer_decodes_is_handed_on(
    ledger: Ledger, tmp_path: Path, with_corrections: bool
) -> None:
    """A chosen record's line that cannot be read now goes on with its reason, to become
    its (invalid) outcome, with or without corrections: it has no NMI to compare."""
    recs = records(3)
    source = tmp_path / "in.jsonl"
    await _rejected_all(ledger, str(source), recs)
    source.write_bytes(_line(recs[0]) + b'{"nmi": "cut short\n' + _line(recs[2]))
    corrected = None
    if with_corrections:
        corrected = str(write_jsonl(tmp_path / "fixed.jsonl", [recs[0], recs[2]]))
    diffs: list[str] = []
    plan = _resubmission(str(source), corrected)

    async with asyncio.timeout(TIMEOUT_S):
        sent = [
            pair
            async for pair in plan_items(plan, ledger, on_diff=lambda nmi, _: diffs.append(nmi))
        ]

    assert [seq for seq, _ in sent] == [0, 1, 2]
    broken: SourceItem = sent[1][1]
    assert broken.source == SourceRef(str(source), line=2)
    assert broken.error is not None
    assert broken.error.startswith("broken JSON")
    assert diffs == ([recs[0]["nmi"], recs[2]["nmi"]] if with_corrections else [])


async def test_a_chosen_line_that_holds_another_nmi_is_still_refused(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A readable record where the parent read another NMI: the input changed, refused."""
    recs = records(3)
    source = tmp_path / "in.jsonl"
    await _rejected_all(ledger, str(source), recs)
    write_jsonl(source, [recs[0], recs[2], recs[1]])
    items = plan_items(_resubmission(str(source)), ledger, on_diff=_no_diff)

    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(InputError, match=f"holds NMI '{recs[2]['nmi']}'"):
            _ = [pair async for pair in items]
