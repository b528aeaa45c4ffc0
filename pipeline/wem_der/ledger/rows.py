"""What the ledger's reads return: one frozen row type per question, built from SQL rows.

The tables they come from are described in ledger/schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from wem_der.records.outcomes import SourceRef


@dataclass(frozen=True, slots=True)
class RunRow:
    """One invocation of the tool, as recorded in `runs`."""

    run_id: str
    kind: str
    status: str
    created_at: float
    finished_at: float | None
    out_dir: str
    inputs: list[str]
    settings: dict[str, Any]
    parent_run_id: str | None
    summary: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RecordState:
    """What the ledger knows of one (kind, nmi) across runs.

    The last two are filled in by `Ledger.delta_states` only. `repeated`: the NMI held
    more than one line of the latest other run that recorded it, so the input may name it
    again further on. `earlier_line`: when the last success is the asking run's own, the
    line of that run whose submission it was.
    """

    exists: bool | None
    last_success_hash: str | None
    last_success_run: str | None
    last_success_txn: str | None
    last_success_at: float | None
    repeated: bool = False
    earlier_line: SourceRef | None = None


@dataclass(frozen=True, slots=True)
class InFlight:
    """The latest attempt for an input record whose final outcome was never recorded.

    `finished_at is None`: the request may or may not have reached the register. Otherwise
    the answer arrived (`http_status`, `transaction_id`) but the run stopped before it
    recorded the outcome, which can be a success that must not be sent again as a create.
    """

    seq: int
    attempt_id: int
    kind: str
    nmi: str
    action: str
    content_hash: str
    started_at: float
    finished_at: float | None
    http_status: int | None
    transaction_id: str | None


@dataclass(frozen=True, slots=True)
class ItemRow:
    """The final outcome of one input record of a run; `line` is its outcome-file line."""

    seq: int
    kind: str
    nmi: str | None
    outcome: str
    line: bytes


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One event for a (kind, nmi): an HTTP attempt, or the final outcome of a record."""

    run_id: str
    seq: int
    at: float
    event: Literal["attempt", "outcome"]
    action: str | None
    http_status: int | None
    transaction_id: str | None
    outcome: str | None
    content_hash: str | None


def run_row(row: tuple[Any, ...]) -> RunRow:
    summary = None if row[9] is None else orjson.loads(row[9])
    inputs, settings = orjson.loads(row[6]), orjson.loads(row[7])
    return RunRow(row[0], row[1], row[2], row[3], row[4], row[5], inputs, settings, row[8], summary)


def history_row(row: tuple[Any, ...]) -> HistoryRow:
    run_id, seq, at, is_outcome, _, action, http_status, txn, content_hash, line = row
    if not is_outcome:
        return HistoryRow(run_id, seq, at, "attempt", action, http_status, txn, None, content_hash)
    item = orjson.loads(line)
    return HistoryRow(
        run_id,
        seq,
        at,
        "outcome",
        item["action"],
        item["http_status"],
        item["transaction_id"],
        item["outcome"],
        item["content_hash"],
    )
