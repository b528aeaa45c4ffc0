"""The durable record of what was sent: a SQLite ledger, read and written from asyncio.

Each method is one operation, queued and committed in batches on the event loop's thread
(ledger/batch.py, which says why there and what runs in a thread instead); the tables are
described in ledger/schema.py. Awaited methods return once their batch is committed;
`finish_attempt`, `set_exists` and `record_outcome` are queued and not awaited.

Durability: `begin_attempt` returns only once its row is committed, so a request never
leaves without a row saying it may have. WAL with synchronous=NORMAL makes a commit
survive kill -9 (not a power cut). Fire-and-forget writes are committed within
`flush_interval_s`; lost ones leave their attempt "in flight", which resume re-checks.
Once a write fails, every later call raises LedgerError.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import orjson

from wem_der.ledger import schema as sql
from wem_der.ledger.batch import GroupCommit, LedgerHooks, Operation
from wem_der.ledger.rows import (
    HistoryRow,
    InFlight,
    ItemRow,
    RecordState,
    RunRow,
    history_row,
    run_row,
)
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef

__all__ = ["HistoryRow", "InFlight", "ItemRow", "Ledger", "LedgerHooks", "RecordState", "RunRow"]

_RUN_END_STATUSES = frozenset({"finished", "aborted", "interrupted"})
# SKIPPED is a success too, but nothing was sent: the earlier success stays the reference.
_SENT_SUCCESS = frozenset({Outcome.ACCEPTED, Outcome.CONDITIONAL})


def _write(statement: str, params: tuple[Any, ...]) -> Operation:
    # Returns None rather than the cursor: the connection is used only inside a batch.
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(statement, params)

    return run


def _read_items(
    statement: str, params: tuple[Any, ...]
) -> Callable[[sqlite3.Connection], list[ItemRow]]:
    def run(conn: sqlite3.Connection) -> list[ItemRow]:
        return [ItemRow(*row) for row in conn.execute(statement, params)]

    return run


def _outcome_filter(outcomes: Collection[str] | None) -> tuple[str, list[str]]:
    """The `{filter}` of an items statement that keeps `outcomes` (all if None), and its
    parameters. Only placeholders are interpolated into the SQL; the values are bound."""
    if outcomes is None:
        return "", []
    wanted = [str(outcome) for outcome in outcomes]
    # SQLite reads `IN ()` as false, so an empty collection selects nothing.
    return f" AND outcome IN ({', '.join('?' * len(wanted))})", wanted


def _record_state(row: tuple[Any, ...]) -> RecordState:
    exists = None if row[0] is None else bool(row[0])
    return RecordState(exists, *row[1:])


def _sent_line(
    conn: sqlite3.Connection, run_id: str, key: tuple[str, str], content_hash: str
) -> SourceRef | None:
    """The line of run `run_id` whose accepted or conditional outcome sent `content_hash`
    for `key`, the latest if several did."""
    for (line,) in conn.execute(sql.SENT_LINES, (*key, run_id)):
        sent = OutcomeRecord.from_json(orjson.loads(line))
        if sent.content_hash == content_hash:
            return sent.source
    return None


class Ledger:
    """The SQLite ledger; use as `async with Ledger(path) as ledger:`.

    A batch holds at most `batch_max` operations; fire-and-forget writes are committed
    within `flush_interval_s`; a WAL checkpoint starts once the WAL holds more than
    `checkpoint_pages` pages (SQLite's own auto-checkpoint point is 1000). `clock` gives
    the wall-clock time of each event; `hooks` are a test's way into the ledger's thread
    (ledger/batch.py).
    """

    def __init__(
        self,
        path: Path,
        *,
        batch_max: int = 1000,
        flush_interval_s: float = 0.05,
        busy_timeout_s: float = 5.0,
        checkpoint_pages: int = 1000,
        clock: Callable[[], float] = time.time,
        hooks: LedgerHooks | None = None,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if checkpoint_pages < 1:
            raise ValueError("checkpoint_pages must be at least 1")
        self._clock = clock
        self._db = GroupCommit(
            path,
            batch_max=batch_max,
            flush_interval_s=flush_interval_s,
            busy_timeout_s=busy_timeout_s,
            checkpoint_pages=checkpoint_pages,
            hooks=hooks or LedgerHooks(),
        )

    async def __aenter__(self) -> Self:
        await self._db.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._db.close(exc)

    # -- runs -------------------------------------------------------------------------

    async def start_run(
        self,
        *,
        run_id: str,
        kind: str,
        out_dir: str,
        inputs: list[str],
        settings: dict[str, Any],
        parent_run_id: str | None = None,
    ) -> None:
        """Record a run as running; a run_id seen before is that run resuming."""
        # default=str: paths become strings and a pydantic SecretStr its '**********'.
        inputs_json = orjson.dumps(inputs).decode()
        settings_json = orjson.dumps(settings, default=str).decode()
        params = (run_id, self._clock(), kind, out_dir, inputs_json, settings_json, parent_run_id)
        await self._db.write(_write(sql.START_RUN, params))

    async def finish_run(self, run_id: str, *, status: str, summary: dict[str, Any]) -> None:
        if status not in _RUN_END_STATUSES:
            raise ValueError(f"status must be one of {sorted(_RUN_END_STATUSES)}, not {status!r}")
        params = (status, self._clock(), orjson.dumps(summary).decode(), run_id)
        updated = await self._db.write(lambda conn: conn.execute(sql.FINISH_RUN, params).rowcount)
        if not updated:
            raise ValueError(f"run {run_id!r} was never started in this ledger")

    async def get_run(self, run_id: str) -> RunRow | None:
        row = await self._db.read(lambda conn: conn.execute(sql.GET_RUN, (run_id,)).fetchone())
        return None if row is None else run_row(row)

    # -- records and attempts ----------------------------------------------------------

    async def lookup(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], RecordState]:
        """What is known of each (kind, nmi); keys the ledger has never seen are absent."""
        wanted = list(keys)  # another task may change the caller's list before the batch runs

        def run(conn: sqlite3.Connection) -> dict[tuple[str, str], RecordState]:
            found = {}
            for key in wanted:
                row = conn.execute(sql.LOOKUP, key).fetchone()
                if row is not None:
                    found[key] = _record_state(row)
            return found

        return await self._db.read(run)

    async def delta_states(
        self, run_id: str, records: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str], RecordState]:
        """What run `run_id` needs to know to decide whether each (kind, nmi, content_hash)
        must be sent: the record's `RecordState`, every key answered, with `repeated` found
        for a content that is not the last success and `earlier_line` for one that is this
        run's own last success (both rare, so an unchanged record costs one read)."""
        wanted = list(records)  # another task may change the caller's list before the batch runs

        def run(conn: sqlite3.Connection) -> dict[tuple[str, str], RecordState]:
            found: dict[tuple[str, str], RecordState] = {}
            asked: set[tuple[str, str]] = set()  # keys whose `repeated` was looked for
            for kind, nmi, content_hash in wanted:
                key = (kind, nmi)
                state = found.get(key)
                if state is None:
                    row = conn.execute(sql.LOOKUP, key).fetchone()
                    state = _record_state(row) if row else RecordState(None, None, None, None, None)
                if content_hash != state.last_success_hash:
                    if key not in asked:
                        asked.add(key)
                        runs = conn.execute(sql.LATEST_LINE_RUNS, (*key, run_id)).fetchall()
                        state = replace(state, repeated=len(runs) == 2 and runs[0] == runs[1])
                elif state.last_success_run == run_id and state.earlier_line is None:
                    state = replace(state, earlier_line=_sent_line(conn, run_id, key, content_hash))
                found[key] = state
            return found

        return await self._db.read(run)

    async def begin_attempt(
        self, *, run_id: str, seq: int, kind: str, nmi: str, action: str, content_hash: str
    ) -> int:
        """Record an attempt as in flight; returns its id once the row is committed.

        Send the request only after this returns. If the awaiting task is cancelled the
        row is still committed: an attempt that never left is recorded as one that may
        have, which resume re-checks, never the other way round.
        """
        params = (run_id, seq, kind, nmi, action, content_hash, self._clock())
        # An INSERT into a rowid table always sets lastrowid.
        return await self._db.write(
            lambda conn: cast(int, conn.execute(sql.BEGIN_ATTEMPT, params).lastrowid)
        )

    def finish_attempt(
        self, attempt_id: int, *, http_status: int | None, transaction_id: str | None
    ) -> None:
        """Record the answer to an attempt (queued; committed with the next batch)."""
        params = (self._clock(), http_status, transaction_id, attempt_id)
        self._db.enqueue(_write(sql.FINISH_ATTEMPT, params))

    def set_exists(self, kind: str, nmi: str, exists: bool) -> None:
        """Record whether the register holds (kind, nmi) (queued)."""
        params = (kind, nmi, int(exists))
        self._db.enqueue(_write(sql.SET_EXISTS, params))

    def record_outcome(
        self, run_id: str, seq: int, outcome: OutcomeRecord, *, line: bytes | None = None
    ) -> None:
        """Record the final outcome of input record `seq` of a run (queued).

        Settles the record's attempts; an accepted or conditional outcome also becomes
        the record's last success, and proves the record exists at the register. `line`
        is `outcome.to_line()` when the caller has it already (it wrote the outcome file).
        """
        now = self._clock()
        line = outcome.to_line() if line is None else line
        item = (run_id, seq, outcome.kind, outcome.nmi, outcome.outcome, now, line)
        success = None
        if outcome.outcome in _SENT_SUCCESS:
            if outcome.nmi is None:
                raise ValueError(f"a {outcome.outcome} outcome without an NMI ({outcome.source})")
            txn = outcome.transaction_id
            success = (outcome.kind, outcome.nmi, outcome.content_hash, run_id, txn, now)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(sql.UPSERT_ITEM, item)
            conn.execute(sql.SETTLE, (run_id, seq))
            if success is not None:
                conn.execute(sql.RECORD_SUCCESS, success)

        self._db.enqueue(run)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._db.flush()

    async def drain(self) -> None:
        """Backpressure for fire-and-forget writers, like `StreamWriter.drain()`.

        A sender needs none: each record awaits `begin_attempt`, whose commit includes
        all that was queued before it. A writer that never awaits (a sink recording
        thousands of invalid records) should await this after each write: it returns at
        once unless more than two batches are queued, and then waits for a flush.
        """
        if self._db.backlogged():
            await self.flush()
        else:
            self._db.check_usable()

    # -- reads for resume, resubmit and report -----------------------------------------

    async def in_flight(self, run_id: str) -> dict[int, InFlight]:
        """seq -> the latest attempt, for each record of the run sent but not concluded."""

        def run(conn: sqlite3.Connection) -> dict[int, InFlight]:
            # Ordered by attempt within seq, so the latest attempt wins.
            return {row[0]: InFlight(*row) for row in conn.execute(sql.IN_FLIGHT, (run_id,))}

        return await self._db.read(run)

    async def iter_run_items(
        self, run_id: str, outcomes: Collection[str] | None = None, *, page_size: int = 1000
    ) -> AsyncIterator[ItemRow]:
        """The final outcomes of a run in seq order, read a page per transaction."""
        where, wanted = _outcome_filter(outcomes)
        statement = sql.ITEMS_PAGE.format(filter=where)
        after = -1
        while True:
            params = (run_id, after, *wanted, page_size)
            page = await self._db.read(_read_items(statement, params))
            for item in page:
                yield item
            if len(page) < page_size:
                return
            after = page[-1].seq

    async def history(self, kind: str, nmi: str) -> list[HistoryRow]:
        """Every attempt and final outcome for (kind, nmi) across runs, oldest first."""
        params = (kind, nmi, kind, nmi)
        return await self._db.read(
            lambda conn: [history_row(row) for row in conn.execute(sql.HISTORY, params)]
        )

    async def outcome_counts(self, run_id: str) -> dict[str, int]:
        rows = await self._db.read(
            lambda conn: conn.execute(sql.OUTCOME_COUNTS, (run_id,)).fetchall()
        )
        return dict(rows)

    async def item_nmis(
        self, run_id: str, outcomes: Collection[str] | None = None
    ) -> dict[int, str | None]:
        """seq -> NMI of the run's records with a final outcome in `outcomes` (all if None).

        What a re-submission chooses from: without the outcome lines, so that choosing
        from a run of millions of records costs its keys, not its lines.
        """
        where, wanted = _outcome_filter(outcomes)
        statement = sql.ITEM_KEYS.format(filter=where)
        params = (run_id, *wanted)
        return await self._db.read(lambda conn: dict(conn.execute(statement, params).fetchall()))

    async def attempt_times(self, run_id: str, *, http_status: int | None = None) -> list[float]:
        """When each HTTP write attempt of the run was answered, or began if no answer
        came (wall clock, ascending); with `http_status`, only the attempts answered so.

        An attempt begins before it waits for the quota (and for the register, while it
        is down), so its answer is the nearer to when the register counted it. Read-backs
        (GETs) have no attempt row: this shows the shape of a run, not an exact account.
        """
        params: tuple[object, ...] = (run_id,)
        statement = sql.ATTEMPT_TIMES
        if http_status is not None:
            params, statement = (run_id, http_status), sql.ATTEMPT_TIMES_ANSWERED
        return await self._db.read(lambda conn: [at for (at,) in conn.execute(statement, params)])

    async def attempt_statuses(self, run_id: str) -> dict[int | None, int]:
        """How many finished write attempts of the run got each answer (None: none came:
        a timeout or a dropped connection).

        An attempt a killed process began but never finished is not counted: most such
        rows were waiting for the quota and never left. Read-backs (GETs) have no row.
        """
        rows = await self._db.read(
            lambda conn: conn.execute(sql.ATTEMPT_STATUSES, (run_id,)).fetchall()
        )
        return dict(rows)

    async def child_runs(self, run_id: str) -> list[RunRow]:
        """The runs that re-submitted records of `run_id`, oldest first."""
        rows = await self._db.read(lambda conn: conn.execute(sql.CHILD_RUNS, (run_id,)).fetchall())
        return [run_row(row) for row in rows]
