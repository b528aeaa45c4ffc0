"""The ledger's group commit, run on the event loop's own thread.

    event loop (holds the writing connection)                              ledger thread
    begin_attempt, start_run, reads, flush ─┐      at the next iteration,
    finish_attempt, set_exists,             ├─> [queue] ─> or after flush_interval_s:
      record_outcome (not awaited)         ─┘      BEGIN (IMMEDIATE if it writes),
                                                   the operations in order, COMMIT
    awaiting futures <──── their results
    WAL past checkpoint_pages ──────────────────────────────────────────> checkpoint
    open ───────────────────────────────────────────────────────────────> open_ledger
    close: commit what is queued ───────────────────────────────────────> checkpoint, close

Group commit: operations are appended to a queue and run as one transaction per batch,
between the loop's other callbacks. An awaited operation schedules a commit for the
loop's next iteration, so it shares that commit with everything the other tasks queue
before then; a batch of only fire-and-forget writes waits up to `flush_interval_s` for
company. A batch takes at most `batch_max` operations: a full queue is committed at the
next iteration, a batch at a time. Awaited operations return once their batch is committed.

Why on the loop: during a run the loop's thread is busy, and a ledger thread of its own
had to win the GIL back for every batch: measured, it spent about 59 µs of CPU per record
where the same SQL on an idle thread takes 16 to 26 µs, and committing on the loop instead
cut a whole run's CPU from 344 to 269 µs per record (benchmarks/client_cost.py, in one
session). The price is that the loop waits while a batch runs, which `batch_max` bounds (a
read runs as an operation too; the long ones, a resume's reads of its finished records and
of those in flight, run before anything is sent).

What stays off the loop, in the ledger's one thread, is what waits for the disk: opening
(quick_check reads every page) and WAL checkpoints, which fsync. SQLite's auto-checkpoint
would run inside whichever commit crosses 1000 pages, so it is off, and the thread runs a
PASSIVE checkpoint once the WAL grows past `checkpoint_pages`, one at a time, and a last
one at close. One fsync remains on the loop, and it is SQLite's: the first commit after a
checkpoint restarts the WAL and syncs its new header, once per `checkpoint_pages`.

`LedgerHooks` are the seams a test reaches the thread through: to hold an open or a
checkpoint up, to fail a checkpoint, or to learn on the loop that one has ended.

Failure: any error in a batch (disk full, file deleted, locked past busy_timeout) rolls it
back and stops the ledger, as does a failed checkpoint: every awaited call of the batch,
every call after it, `flush` and close then raise LedgerError, because a run that cannot
record what it sends must not keep sending. Every file the ledger keeps open is opened
with it, so a run's connections cannot leave a checkpoint without a descriptor; what SQLite
still opens later (a temporary file for a large sort) fails as "unable to open database
file", which the message names for what it is when the process is out of descriptors.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from wem_der.errors import LedgerError
from wem_der.files.limits import shortage
from wem_der.ledger.schema import is_busy, locked, open_ledger, unusable

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]

# A WAL file is a 32-byte header, then one frame per page written: a 24-byte header and
# the page (sqlite.org/fileformat2.html#walformat).
_WAL_HEADER = 32
_FRAME_HEADER = 24


@dataclass(slots=True)
class _Op:
    run: Operation
    writes: bool
    future: asyncio.Future[Any] | None = None


@dataclass(slots=True, frozen=True)
class _Files:
    """The open ledger: the loop's connection, the thread's, and when to checkpoint."""

    writer: sqlite3.Connection
    checkpointer: sqlite3.Connection
    wal: Path
    wal_limit: int  # bytes


class LedgerHooks:
    """Called at points of the ledger's life, for tests: this class does nothing at any of
    them; a subclass passed as `Ledger(..., hooks=...)` may wait there, or raise."""

    def opening(self, path: Path) -> None:
        """In the ledger's thread, before the file at `path` is opened."""

    def checkpointing(self) -> None:
        """In the ledger's thread, before each checkpoint; what it raises fails that one."""

    def checkpointed(self) -> None:
        """On the event loop, once a checkpoint has ended, failed or not, and the ledger
        has taken note (the next commit past the limit starts another)."""


def _nothing(conn: sqlite3.Connection) -> None:
    """The operation behind flush: its commit is the point."""


def _connect(
    path: Path, busy_timeout_s: float, checkpoint_pages: int, hooks: LedgerHooks
) -> _Files:
    hooks.opening(path)
    writer = open_ledger(path, busy_timeout_s=busy_timeout_s)
    opened = [writer]
    try:
        page_size = writer.execute("PRAGMA page_size").fetchone()[0]
        wal_limit = _WAL_HEADER + checkpoint_pages * (_FRAME_HEADER + page_size)
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        # The loop learns the WAL's length from its file size (os.stat: a microsecond per
        # commit; Python's sqlite3 has no wal_hook, which reports it). After a checkpoint
        # SQLite writes the WAL again from the start and keeps the file at its largest;
        # this limit has the commit that starts it over cut the file back, so a size past
        # the limit means that many frames really are in it.
        writer.execute(f"PRAGMA journal_size_limit = {wal_limit}")
        checkpointer = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        opened.append(checkpointer)
        # SQLite opens a connection's WAL and shared memory at its first read: here, so that
        # no checkpoint deep into a run, whose connections may by then hold every descriptor
        # left, has a file to open. The ledger opens none after this.
        checkpointer.execute("SELECT count(*) FROM meta").fetchall()
    except BaseException as exc:
        # Made before the files close, which would free the descriptor it may have lacked.
        error = unusable(path, exc) if isinstance(exc, sqlite3.Error) else None
        for conn in opened:
            conn.close()
        if error is None:
            raise
        raise error from exc
    return _Files(writer, checkpointer, Path(f"{path}-wal"), wal_limit)


def _checkpoint(conn: sqlite3.Connection, hooks: LedgerHooks) -> None:
    hooks.checkpointing()
    # PASSIVE neither waits for nor blocks the loop's commits: it copies the frames no
    # reader still needs, and the WAL starts over once they all are.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _disconnect(files: _Files) -> None:
    try:
        files.writer.close()
    finally:
        files.checkpointer.close()


def _close(files: _Files, hooks: LedgerHooks, *, checkpoint: bool) -> None:
    try:
        # Explicit: SQLite checkpoints at close only when its connection is the file's
        # last, and `wem-der report` may be reading it.
        if checkpoint:
            _checkpoint(files.checkpointer, hooks)
    finally:
        _disconnect(files)


def _close_opened(opening: Future[_Files]) -> None:
    """Close what an abandoned open opened, if it did (runs after it, in its thread)."""
    try:
        files = opening.result()
    except BaseException:  # it failed or never started: nothing is open
        return
    _disconnect(files)


class GroupCommit:
    """The queue, the connection and the thread behind one open `Ledger`; `open` and
    `close` bracket them."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max: int,
        flush_interval_s: float,
        busy_timeout_s: float,
        checkpoint_pages: int,
        hooks: LedgerHooks,
    ) -> None:
        self._path = path
        self._hooks = hooks
        self._batch_max = batch_max
        self._flush_interval_s = flush_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._checkpoint_pages = checkpoint_pages
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread, so that open, checkpoints and close run there in order and the
        # checkpointing connection is never used by two threads at once.
        self._thread: ThreadPoolExecutor | None = None
        self._files: _Files | None = None
        self._accepting = False
        self._queue: list[_Op] = []
        # The scheduled commit: a TimerHandle waits out flush_interval_s, a plain Handle
        # runs at the loop's next iteration.
        self._commit_at: asyncio.Handle | None = None
        self._checkpointing = False
        self._failure: Exception | None = None
        self._shortage: str | None = None  # see `_fail`

    async def open(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this Ledger is already open")
        self._loop = asyncio.get_running_loop()
        self._queue = []
        self._failure = self._shortage = None
        thread = ThreadPoolExecutor(1, thread_name_prefix="wem-der-ledger")
        opening = thread.submit(
            _connect, self._path, self._busy_timeout_s, self._checkpoint_pages, self._hooks
        )
        try:
            files = await asyncio.wrap_future(opening)
        except BaseException:
            # Open failed, or we were cancelled while the thread opens: close what it
            # opened once it is done (the thread runs one job at a time), and end it.
            closed = thread.submit(_close_opened, opening)
            thread.shutdown(wait=False)  # it ends after that job, even if we are cancelled
            await asyncio.shield(asyncio.wrap_future(closed))
            thread.shutdown()  # its last job is done: this join is short
            raise
        self._thread, self._files = thread, files
        self._accepting = True

    async def close(self, exc: BaseException | None) -> None:
        """Commit what is queued and close the files; `exc` is what is leaving the block."""
        thread, files = self._thread, self._files
        if thread is None or files is None:
            return
        self._accepting = False
        if self._commit_at is not None:
            self._commit_at.cancel()
            self._commit_at = None
        # Committed here rather than scheduled, so that nothing queued is left behind
        # even if this task is cancelled while the files close.
        while self._queue and self._failure is None:
            self._execute(files.writer, self._take())
        self._thread = self._files = None
        # After any checkpoint still running: the thread runs one job at a time.
        closing = thread.submit(_close, files, self._hooks, checkpoint=self._failure is None)
        thread.shutdown(wait=False)  # it ends after that job, even if we are cancelled
        try:
            # Shielded: cancelling the wrapper would cancel a job still waiting its turn.
            await asyncio.shield(asyncio.wrap_future(closing))
        except Exception as error:  # the last checkpoint failed; the files are closed
            if self._failure is None:
                self._failure = error
        thread.shutdown()  # its last job is done: this join is short
        if self._failure is None:
            return
        failure = self._failed()
        if exc is None or (isinstance(exc, Exception) and not isinstance(exc, LedgerError)):
            raise failure
        if not isinstance(exc, LedgerError):
            # Cancellation keeps propagating as such; the failure rides along.
            exc.add_note(str(failure))

    def check_usable(self) -> None:
        if not self._accepting:
            raise RuntimeError("the ledger is not open: use `async with Ledger(path) as ledger`")
        if self._failure is not None:
            raise self._failed()

    def backlogged(self) -> bool:
        """More than two batches are queued: a writer has run that far without yielding
        to the loop, which commits a full batch at every iteration."""
        return len(self._queue) > 2 * self._batch_max

    def enqueue(self, run: Operation) -> None:
        """Queue the write `run` without waiting for it; it commits with the next batch."""
        self.check_usable()
        self._push(_Op(run, writes=True))

    async def write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run the write `run`; its result once the batch holding it is committed."""
        return await self._call(run, writes=True)

    async def read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run the read `run`; its result once the batch holding it has ended."""
        return await self._call(run, writes=False)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._call(_nothing, writes=False)

    async def _call(self, run: Callable[[sqlite3.Connection], T], *, writes: bool) -> T:
        self.check_usable()
        future: asyncio.Future[T] = cast(asyncio.AbstractEventLoop, self._loop).create_future()
        # If the awaiting task is cancelled the operation stays queued and still commits.
        self._push(_Op(run, writes, future))
        return await future

    def _push(self, op: _Op) -> None:
        self._queue.append(op)
        soon = op.future is not None or len(self._queue) >= self._batch_max
        pending = self._commit_at
        if pending is not None:
            if not soon or not isinstance(pending, asyncio.TimerHandle):
                return  # the commit already scheduled is as early as this one needs
            pending.cancel()  # a timer, overtaken
        self._schedule(soon=soon)

    def _schedule(self, *, soon: bool) -> None:
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        if soon:
            self._commit_at = loop.call_soon(self._commit)
        else:
            self._commit_at = loop.call_later(self._flush_interval_s, self._commit)

    def _take(self) -> list[_Op]:
        batch = self._queue[: self._batch_max]
        del self._queue[: self._batch_max]
        return batch

    def _commit(self) -> None:
        self._commit_at = None
        self._execute(cast(_Files, self._files).writer, self._take())
        if self._queue and self._failure is None:
            self._schedule(soon=True)  # what a full batch left: one batch per iteration

    def _execute(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        writes = any(op.writes for op in batch)
        try:
            # BEGIN IMMEDIATE waits for another connection's write lock, up to
            # busy_timeout_s, on the loop. Another wem-der holds it only briefly: the run
            # lock (run/lock.py) keeps a second process off this run, but a run of another
            # outcome directory may share the --state-dir, and it holds the lock for one
            # batch, which batch_max bounds and synchronous=NORMAL does not fsync, or for
            # its opening's schema check. Checkpoints never take it, and a batch of only
            # reads, all that `wem-der report` runs, begins DEFERRED and takes none. Only
            # some other program makes the wait run out, and then the run stops (`locked`).
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            try:
                values = [op.run(conn) for op in batch]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:  # whatever it was, the batch is lost: say so
            self._fail(exc, batch, why=shortage(exc))
            return
        for op, value in zip(batch, values, strict=True):
            if op.future is not None and not op.future.done():  # done: its task was cancelled
                op.future.set_result(value)
        if writes:
            self._check_wal()

    def _check_wal(self) -> None:
        if self._checkpointing or not self._accepting:  # closing checkpoints anyway
            return
        files, thread = cast(_Files, self._files), cast(ThreadPoolExecutor, self._thread)
        try:
            size = os.stat(files.wal).st_size
        except OSError as exc:  # SQLite keeps the WAL while the file is open: it was deleted
            self._fail(exc)
            return
        if size > files.wal_limit:
            self._checkpointing = True
            done = asyncio.wrap_future(thread.submit(_checkpoint, files.checkpointer, self._hooks))
            done.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpointing = False
        error = done.exception()
        if isinstance(error, Exception) and self._failure is None:
            self._fail(error, why=shortage(error))
        self._hooks.checkpointed()

    def _fail(
        self, exc: Exception, batch: list[_Op] | None = None, *, why: str | None = None
    ) -> None:
        """Stop the ledger: the batch that failed and everything queued behind it fail.

        `why`: what `shortage` made of `exc` when it was caught (the descriptors it lacked
        may be free again by the time the message is written)."""
        self._failure = exc
        self._shortage = why
        if self._commit_at is not None:
            self._commit_at.cancel()
            self._commit_at = None
        lost = [*(batch or ()), *self._queue]
        self._queue = []
        for op in lost:
            if op.future is not None and not op.future.done():
                op.future.set_exception(self._failed())

    def _failed(self) -> LedgerError:
        # A new exception per raise: one instance raised in many tasks mixes tracebacks.
        cause = self._failure
        if isinstance(cause, sqlite3.Error) and is_busy(cause):
            error = locked(self._path, self._busy_timeout_s)
        elif self._shortage is not None:
            error = LedgerError(
                f"writing the ledger {self._path} failed ({cause}): {self._shortage}; then"
                " `wem-der resume` the run (what was committed is kept)"
            )
        else:
            error = LedgerError(
                f"writing the ledger {self._path} failed ({cause}); what was committed "
                "is kept, but the run cannot go on without a truthful record: fix the cause"
                " (a full disk, say), then `wem-der resume` the run"
            )
        error.__cause__ = cause
        return error
