"""The durable record of what was sent: a SQLite ledger driven by one dedicated thread.

    event loop                                       ledger thread (owns the connection)
    begin_attempt, start_run, reads, flush ─┐
    finish_attempt, set_exists,             ├─> [SimpleQueue] ─> batch ─> BEGIN IMMEDIATE
      record_outcome (not awaited)         ─┘                             ops, in order
    awaiting futures <──── call_soon_threadsafe ─────────────────────── COMMIT

Group commit: the thread takes what is queued, up to `batch_max` operations, and runs it
as one transaction. A batch of only fire-and-forget writes waits up to `flush_interval_s`
for company; one holding an awaited operation commits at once, so `begin_attempt` costs
one commit that it shares with everything queued beside it. SQLite work never runs on the
event loop. The tables are described in ledger_schema.py.

Durability: `begin_attempt` returns only once its row is committed, so a request never
leaves without a row saying it may have. WAL with synchronous=NORMAL makes a commit
survive kill -9 (not a power cut). Fire-and-forget writes are committed within
`flush_interval_s`; lost ones leave their attempt "in flight", which resume re-checks.

Failure: any error in the thread (disk full, file deleted, locked past busy_timeout) rolls
back its batch and stops the ledger: every awaited call, `flush` and exit then raise
LedgerError, because a run that cannot record what it sends must not keep sending.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import orjson

from pipeline import ledger_schema as sql
from pipeline.errors import LedgerError
from pipeline.ledger_schema import (
    HistoryRow,
    InFlight,
    ItemRow,
    RecordState,
    RunRow,
    history_row,
    is_busy,
    locked,
    open_ledger,
    run_row,
)
from pipeline.outcomes import Outcome, OutcomeRecord

__all__ = ["HistoryRow", "InFlight", "ItemRow", "Ledger", "RecordState", "RunRow"]

T = TypeVar("T")
_Run = Callable[[sqlite3.Connection], Any]

_RUN_END_STATUSES = frozenset({"finished", "aborted", "interrupted"})
# SKIPPED is a success too, but nothing was sent: the earlier success stays the reference.
_SENT_SUCCESS = frozenset({Outcome.ACCEPTED, Outcome.CONDITIONAL})


@dataclass(slots=True)
class _Op:
    run: _Run
    future: asyncio.Future[Any] | None = None
    close: bool = False


def _nothing(conn: sqlite3.Connection) -> None:
    """The operation behind flush and close: its commit is the point."""


def _write(statement: str, params: tuple[Any, ...]) -> _Run:
    # Returns None rather than the cursor: nothing of the connection leaves its thread.
    def run(conn: sqlite3.Connection) -> None:
        conn.execute(statement, params)

    return run


def _read_items(
    statement: str, params: tuple[Any, ...]
) -> Callable[[sqlite3.Connection], list[ItemRow]]:
    def run(conn: sqlite3.Connection) -> list[ItemRow]:
        return [ItemRow(*row) for row in conn.execute(statement, params)]

    return run


def _resolve(results: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, value in results:
        if future.done():  # its awaiting task was cancelled
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


class Ledger:
    """The SQLite ledger; use as `async with Ledger(path) as ledger:`."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max: int = 1000,
        flush_interval_s: float = 0.05,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._path = path
        self._batch_max = batch_max
        self._flush_interval_s = flush_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        # Set by the thread, read by the loop: a plain attribute swap is atomic.
        self._failure: Exception | None = None

    async def __aenter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("this Ledger is already open")
        self._loop = loop = asyncio.get_running_loop()
        self._queue = queue.SimpleQueue()
        self._failure = None
        opened: asyncio.Future[None] = loop.create_future()
        # Daemon: if the loop dies without __aexit__, the process must still be able to
        # exit; every awaited write was already committed, so only unflushed writes go.
        thread = threading.Thread(
            target=self._serve, args=(opened,), name="wem-der-ledger", daemon=True
        )
        thread.start()
        try:
            await opened
        except BaseException:
            # Open failed (the thread has ended) or we were cancelled mid-open (stop it).
            self._queue.put(_Op(_nothing, close=True))
            thread.join()
            raise
        self._thread = thread
        self._accepting = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        thread = self._thread
        if thread is None:
            return
        # Queued even when the ledger has failed: the thread must still close and end.
        closed: asyncio.Future[None] = cast(asyncio.AbstractEventLoop, self._loop).create_future()
        self._queue.put(_Op(_nothing, closed, close=True))
        self._accepting = False
        try:
            await closed
        except LedgerError as failure:
            if exc is None or (isinstance(exc, Exception) and not isinstance(exc, LedgerError)):
                raise
            if not isinstance(exc, LedgerError):
                # Cancellation keeps propagating as such; the failure rides along.
                exc.add_note(str(failure))
        finally:
            # The thread settles `closed` as its last act, so this join is short; when
            # cancelled it waits for the final commit, bounded by busy_timeout_s, rather
            # than leave queued writes behind.
            thread.join()
            self._thread = None

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
        await self._call(_write(sql.START_RUN, params))

    async def finish_run(self, run_id: str, *, status: str, summary: dict[str, Any]) -> None:
        if status not in _RUN_END_STATUSES:
            raise ValueError(f"status must be one of {sorted(_RUN_END_STATUSES)}, not {status!r}")
        params = (status, self._clock(), orjson.dumps(summary).decode(), run_id)
        updated = await self._call(lambda conn: conn.execute(sql.FINISH_RUN, params).rowcount)
        if not updated:
            raise ValueError(f"run {run_id!r} was never started in this ledger")

    async def get_run(self, run_id: str) -> RunRow | None:
        row = await self._call(lambda conn: conn.execute(sql.GET_RUN, (run_id,)).fetchone())
        return None if row is None else run_row(row)

    async def latest_runs(self, limit: int = 20) -> list[RunRow]:
        """The most recent runs, newest first."""
        rows = await self._call(lambda conn: conn.execute(sql.LATEST_RUNS, (limit,)).fetchall())
        return [run_row(row) for row in rows]

    # -- records and attempts ----------------------------------------------------------

    async def lookup(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], RecordState]:
        """What is known of each (kind, nmi); keys the ledger has never seen are absent."""
        wanted = list(keys)  # the caller may reuse its list while the thread reads

        def run(conn: sqlite3.Connection) -> dict[tuple[str, str], RecordState]:
            found = {}
            for key in wanted:
                row = conn.execute(sql.LOOKUP, key).fetchone()
                if row is not None:
                    exists = None if row[0] is None else bool(row[0])
                    found[key] = RecordState(exists, *row[1:])
            return found

        return await self._call(run)

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
        return await self._call(
            lambda conn: cast(int, conn.execute(sql.BEGIN_ATTEMPT, params).lastrowid)
        )

    def finish_attempt(
        self, attempt_id: int, *, http_status: int | None, transaction_id: str | None
    ) -> None:
        """Record the answer to an attempt (queued; committed with the next batch)."""
        params = (self._clock(), http_status, transaction_id, attempt_id)
        self._enqueue(_write(sql.FINISH_ATTEMPT, params))

    def set_exists(self, kind: str, nmi: str, exists: bool) -> None:
        """Record whether the register holds (kind, nmi) (queued)."""
        params = (kind, nmi, int(exists))
        self._enqueue(_write(sql.SET_EXISTS, params))

    def record_outcome(self, run_id: str, seq: int, outcome: OutcomeRecord) -> None:
        """Record the final outcome of input record `seq` of a run (queued).

        Settles the record's attempts; an accepted or conditional outcome also becomes
        the record's last success, and proves the record exists at the register.
        """
        now = self._clock()
        line = outcome.to_line()
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

        self._enqueue(run)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._call(_nothing)

    async def drain(self) -> None:
        """Backpressure for fire-and-forget writers, like `StreamWriter.drain()`.

        A sender needs none: each record awaits `begin_attempt`, whose commit includes
        all that was queued before it. A writer that never awaits (a sink recording
        thousands of invalid records) should await this after each write: it returns at
        once unless more than two batches are queued, and then waits for a flush.
        """
        if self._queue.qsize() > 2 * self._batch_max:
            await self.flush()
        else:
            self._check_usable()

    # -- reads for resume, resubmit and report -----------------------------------------

    async def done_seqs(self, run_id: str) -> set[int]:
        """The seqs of the run that have a final outcome."""
        return await self._call(
            lambda conn: {seq for (seq,) in conn.execute(sql.DONE_SEQS, (run_id,))}
        )

    async def in_flight(self, run_id: str) -> dict[int, InFlight]:
        """seq -> the latest attempt, for each record of the run sent but not concluded."""

        def run(conn: sqlite3.Connection) -> dict[int, InFlight]:
            # Ordered by attempt within seq, so the latest attempt wins.
            return {row[0]: InFlight(*row) for row in conn.execute(sql.IN_FLIGHT, (run_id,))}

        return await self._call(run)

    async def iter_run_items(
        self, run_id: str, outcomes: Collection[str] | None = None, *, page_size: int = 1000
    ) -> AsyncIterator[ItemRow]:
        """The final outcomes of a run in seq order, read a page per transaction."""
        wanted = [] if outcomes is None else [str(outcome) for outcome in outcomes]
        # SQLite reads `IN ()` as false, so an empty collection yields nothing.
        where = f" AND outcome IN ({', '.join('?' * len(wanted))})" if outcomes is not None else ""
        statement = sql.ITEMS_PAGE.format(filter=where)  # only placeholders are interpolated
        after = -1
        while True:
            params = (run_id, after, *wanted, page_size)
            page = await self._call(_read_items(statement, params))
            for item in page:
                yield item
            if len(page) < page_size:
                return
            after = page[-1].seq

    async def run_items(
        self, run_id: str, outcomes: Collection[str] | None = None
    ) -> list[ItemRow]:
        """`iter_run_items` as a list; iterate instead for runs of millions of records."""
        return [item async for item in self.iter_run_items(run_id, outcomes)]

    async def history(self, kind: str, nmi: str) -> list[HistoryRow]:
        """Every attempt and final outcome for (kind, nmi) across runs, oldest first."""
        params = (kind, nmi, kind, nmi)
        return await self._call(
            lambda conn: [history_row(row) for row in conn.execute(sql.HISTORY, params)]
        )

    async def outcome_counts(self, run_id: str) -> dict[str, int]:
        rows = await self._call(lambda conn: conn.execute(sql.OUTCOME_COUNTS, (run_id,)).fetchall())
        return dict(rows)

    async def item_nmis(
        self, run_id: str, outcomes: Collection[str] | None = None
    ) -> dict[int, str | None]:
        """seq -> NMI of the run's records with a final outcome in `outcomes` (all if None).

        What a re-submission chooses from: without the outcome lines, so that choosing
        from a run of millions of records costs its keys, not its lines.
        """
        wanted = [] if outcomes is None else [str(outcome) for outcome in outcomes]
        where = f" AND outcome IN ({', '.join('?' * len(wanted))})" if outcomes is not None else ""
        statement = sql.ITEM_KEYS.format(filter=where)  # only placeholders are interpolated
        params = (run_id, *wanted)
        return await self._call(lambda conn: dict(conn.execute(statement, params).fetchall()))

    async def attempt_starts(self, run_id: str) -> list[float]:
        """When each HTTP write attempt of the run began (wall clock, ascending).

        Read-backs (GETs) have no attempt row, and the time is taken before the attempt
        waits for the quota: this shows the shape of a run, not an exact quota account.
        """
        return await self._call(
            lambda conn: [at for (at,) in conn.execute(sql.ATTEMPT_STARTS, (run_id,))]
        )

    async def child_runs(self, run_id: str) -> list[RunRow]:
        """The runs that re-submitted records of `run_id`, oldest first."""
        rows = await self._call(lambda conn: conn.execute(sql.CHILD_RUNS, (run_id,)).fetchall())
        return [run_row(row) for row in rows]

    # -- the queue and the thread ------------------------------------------------------

    def _check_usable(self) -> None:
        if not self._accepting:
            raise RuntimeError("the ledger is not open: use `async with Ledger(path) as ledger`")
        if self._failure is not None:
            raise self._failed()

    def _failed(self) -> LedgerError:
        # A new exception per raise: one instance raised in many tasks mixes tracebacks.
        cause = self._failure
        if isinstance(cause, sqlite3.Error) and is_busy(cause):
            error = locked(self._path, self._busy_timeout_s)
        else:
            error = LedgerError(
                f"writing the ledger {self._path} failed ({cause}); what was committed "
                "is kept, but the run cannot go on without a truthful record"
            )
        error.__cause__ = cause
        return error

    def _enqueue(self, run: _Run) -> None:
        self._check_usable()
        self._queue.put(_Op(run))

    async def _call(self, run: Callable[[sqlite3.Connection], T]) -> T:
        self._check_usable()
        future: asyncio.Future[T] = cast(asyncio.AbstractEventLoop, self._loop).create_future()
        self._queue.put(_Op(run, future))
        return await future

    def _serve(self, opened: asyncio.Future[None]) -> None:
        try:
            conn = open_ledger(self._path, busy_timeout_s=self._busy_timeout_s)
        except Exception as exc:  # LedgerError, or a bug that must not hang __aenter__
            self._settle([(opened, exc)])
            return
        self._settle([(opened, None)])
        try:
            while True:
                batch = self._collect()
                results = self._execute(conn, batch)
                if batch[-1].close:
                    break
                self._settle(results)
        finally:
            conn.close()
        self._settle(results)  # after close(), so that __aexit__ returns with the file shut

    def _collect(self) -> list[_Op]:
        batch = [self._queue.get()]
        urgent = batch[0].future is not None
        deadline = time.monotonic() + self._flush_interval_s
        while len(batch) < self._batch_max and not batch[-1].close:
            try:
                if urgent:
                    op = self._queue.get_nowait()
                else:
                    op = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            batch.append(op)
            urgent = urgent or op.future is not None
        return batch

    def _execute(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], object]]:
        if self._failure is None:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    values = [op.run(conn) for op in batch]
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except Exception as exc:  # whatever it was, the batch is lost: say so
                self._failure = exc
            else:
                return [(op.future, v) for op, v in zip(batch, values, strict=True) if op.future]
        return [(op.future, self._failed()) for op in batch if op.future]

    def _settle(self, results: list[tuple[asyncio.Future[Any], object]]) -> None:
        if results:
            cast(asyncio.AbstractEventLoop, self._loop).call_soon_threadsafe(_resolve, results)
