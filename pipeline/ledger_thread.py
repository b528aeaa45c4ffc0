"""The ledger's thread: it alone holds the SQLite connection, and commits in batches.

    event loop                                       ledger thread (owns the connection)
    begin_attempt, start_run, reads, flush ─┐
    finish_attempt, set_exists,             ├─> [SimpleQueue] ─> batch ─> BEGIN IMMEDIATE
      record_outcome (not awaited)         ─┘                             ops, in order
    awaiting futures <──── call_soon_threadsafe ─────────────────────── COMMIT

Group commit: the thread takes what is queued, up to `batch_max` operations, and runs it
as one transaction. A batch of only fire-and-forget writes waits up to `flush_interval_s`
for company; one holding an awaited operation commits at once, so an awaited write costs
one commit that it shares with everything queued beside it. SQLite work never runs on the
event loop.

Failure: any error in the thread (disk full, file deleted, locked past busy_timeout) rolls
back its batch and stops the ledger: every awaited call, `flush` and close then raise
LedgerError, because a run that cannot record what it sends must not keep sending.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from pipeline.errors import LedgerError
from pipeline.ledger_schema import is_busy, locked, open_ledger

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Op:
    run: Operation
    future: asyncio.Future[Any] | None = None
    close: bool = False


def _nothing(conn: sqlite3.Connection) -> None:
    """The operation behind flush and close: its commit is the point."""


def _resolve(results: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, value in results:
        if future.done():  # its awaiting task was cancelled
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


class LedgerThread:
    """The queue and the thread behind one open `Ledger`; `open` and `close` bracket it."""

    def __init__(
        self, path: Path, *, batch_max: int, flush_interval_s: float, busy_timeout_s: float
    ) -> None:
        self._path = path
        self._batch_max = batch_max
        self._flush_interval_s = flush_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        # Set by the thread, read by the loop: a plain attribute swap is atomic.
        self._failure: Exception | None = None

    async def open(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this Ledger is already open")
        self._loop = loop = asyncio.get_running_loop()
        self._queue = queue.SimpleQueue()
        self._failure = None
        opened: asyncio.Future[None] = loop.create_future()
        # Daemon: if the loop dies without close(), the process must still be able to
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

    async def close(self, exc: BaseException | None) -> None:
        """Commit what is queued and end the thread; `exc` is what is leaving the block."""
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

    def check_usable(self) -> None:
        if not self._accepting:
            raise RuntimeError("the ledger is not open: use `async with Ledger(path) as ledger`")
        if self._failure is not None:
            raise self._failed()

    def backlogged(self) -> bool:
        """More than two batches are waiting for the thread."""
        return self._queue.qsize() > 2 * self._batch_max

    def enqueue(self, run: Operation) -> None:
        """Queue `run` without waiting for it; it commits with the next batch."""
        self.check_usable()
        self._queue.put(_Op(run))

    async def call(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run `run` in the thread; its result once the batch holding it is committed."""
        self.check_usable()
        future: asyncio.Future[T] = cast(asyncio.AbstractEventLoop, self._loop).create_future()
        self._queue.put(_Op(run, future))
        return await future

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.call(_nothing)

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

    def _serve(self, opened: asyncio.Future[None]) -> None:
        try:
            conn = open_ledger(self._path, busy_timeout_s=self._busy_timeout_s)
        except Exception as exc:  # LedgerError, or a bug that must not hang open()
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
        self._settle(results)  # after conn.close(), so that close() returns with the file shut

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
