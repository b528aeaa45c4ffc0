"""The SQLite ledger, against real files in tmp_path."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from wem_der.errors import LedgerError
from wem_der.ledger import schema as ledger_schema
from wem_der.ledger.store import Ledger, LedgerHooks
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord, SourceRef
from wem_der.records.shapes import RecordKind
from wem_der.testing import VirtualClock

from tests.damage import overwrite_with_garbage, tear_the_items_table

NMI = RecordKind.NMI
HASH = "a" * 64
REPO = Path(__file__).resolve().parents[1]


def ticking() -> VirtualClock:
    """A wall clock that moves one second per reading, so every event has its own time."""
    return VirtualClock(start=1_000.0, tick=1.0)


@pytest.fixture(autouse=True)
def _no_leaked_thread() -> Iterator[None]:
    yield
    assert not [t for t in threading.enumerate() if t.name.startswith("wem-der-ledger")]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite3"


def outcome(
    seq: int,
    result: Outcome,
    *,
    nmi: str | None = None,
    txn: str | None = None,
    content_hash: str = HASH,
) -> OutcomeRecord:
    return OutcomeRecord(
        kind=NMI,
        nmi=nmi or f"N{seq:09d}",
        source=SourceRef("in.jsonl", line=seq + 1),
        outcome=result,
        action=Action.CREATE,
        http_status=200 if result in {Outcome.ACCEPTED, Outcome.CONDITIONAL} else 400,
        transaction_id=txn,
        # An invalid outcome must say why (OutcomeRecord refuses one that does not).
        errors=[{"code": "local", "detail": "x"}] if result is Outcome.INVALID else [],
        content_hash=content_hash,
        run_id="r1",
    )


async def start(ledger: Ledger, run_id: str = "r1", **kw: Any) -> None:
    await ledger.start_run(
        run_id=run_id, kind="submit", out_dir="out", inputs=["in.jsonl"], settings={}, **kw
    )


async def attempt(ledger: Ledger, seq: int, run_id: str = "r1", nmi: str | None = None) -> int:
    nmi = nmi or f"N{seq:09d}"
    return await ledger.begin_attempt(
        run_id=run_id, seq=seq, kind=NMI, nmi=nmi, action="create", content_hash=HASH
    )


def peek(path: Path, query: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the file through a second connection, as another process would."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, params).fetchall()


def wal_of(path: Path) -> Path:
    return Path(f"{path}-wal")


async def done_seqs(ledger: Ledger, run_id: str) -> set[int]:
    """The seqs of the run with a final outcome, as a resume reads them."""
    return {item.seq async for item in ledger.iter_run_items(run_id)}


async def test_new_ledger_is_private_wal_and_versioned(path: Path) -> None:
    """A new ledger gets a 0o700 directory, a 0o600 file, WAL mode and schema_version."""
    async with asyncio.timeout(10), Ledger(path):
        pass
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert peek(path, "PRAGMA journal_mode") == [("wal",)]
    tables = {name for (name,) in peek(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "runs", "records", "attempts", "items"}
    assert peek(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]


async def test_begin_attempt_is_committed_before_it_returns(path: Path) -> None:
    """Another connection sees the in-flight row as soon as begin_attempt returns."""
    async with asyncio.timeout(10), Ledger(path, flush_interval_s=60) as ledger:
        await start(ledger)
        attempt_id = await attempt(ledger, 7)
        rows = peek(path, "SELECT seq, finished_at FROM attempts WHERE attempt_id = ?", attempt_id)
        assert rows == [(7, None)]


async def test_queued_writes_wait_for_a_batch_and_flush_commits_them(path: Path) -> None:
    """finish_attempt, record_outcome and set_exists are not committed until flushed."""
    async with asyncio.timeout(10), Ledger(path, flush_interval_s=60) as ledger:
        await start(ledger)
        attempt_id = await attempt(ledger, 0)
        ledger.finish_attempt(attempt_id, http_status=200, transaction_id="T1")
        ledger.record_outcome("r1", 0, outcome(0, Outcome.ACCEPTED, txn="T1"))
        ledger.set_exists(NMI, "N2", exists=False)
        query = "SELECT http_status FROM attempts"
        assert peek(path, query) == [(None,)]
        assert peek(path, "SELECT COUNT(*) FROM items") == [(0,)]
        await ledger.flush()
        assert peek(path, query) == [(200,)]
        assert peek(path, "SELECT COUNT(*) FROM items") == [(1,)]
        assert peek(path, "SELECT nmi, exists_at_register FROM records ORDER BY nmi") == [
            ("N000000000", 1),
            ("N2", 0),
        ]


@pytest.mark.parametrize("result", list(Outcome))
async def test_only_accepted_and_conditional_become_the_last_success(
    path: Path, result: Outcome
) -> None:
    """record_outcome sets records.last_success_* for accepted and conditional only."""
    async with asyncio.timeout(10), Ledger(path, clock=ticking()) as ledger:
        await start(ledger)
        ledger.record_outcome("r1", 0, outcome(0, result, txn="T9", content_hash="h1"))
        state = (await ledger.lookup([(NMI, "N000000000")])).get((NMI, "N000000000"))
        assert (await done_seqs(ledger, "r1")) == {0}
    if result in {Outcome.ACCEPTED, Outcome.CONDITIONAL}:
        assert state is not None
        assert (state.exists, state.last_success_hash) == (True, "h1")
        assert (state.last_success_run, state.last_success_txn) == ("r1", "T9")
        assert state.last_success_at is not None
    else:
        assert state is None


async def test_a_later_failure_keeps_the_last_success(path: Path) -> None:
    """A rejected re-submission does not erase the record's earlier accepted one."""
    async with asyncio.timeout(10), Ledger(path) as ledger:
        await start(ledger)
        await start(ledger, "r2")
        ledger.record_outcome("r1", 0, outcome(0, Outcome.ACCEPTED, txn="T1", content_hash="h1"))
        ledger.record_outcome("r2", 0, outcome(0, Outcome.REJECTED, content_hash="h2"))
        state = (await ledger.lookup([(NMI, "N000000000")]))[(NMI, "N000000000")]
    assert (state.last_success_hash, state.last_success_run) == ("h1", "r1")


async def test_a_success_without_an_nmi_is_refused(path: Path) -> None:
    """An accepted outcome must name its NMI, or the ledger could not key it."""
    nameless = outcome(0, Outcome.ACCEPTED)
    nameless.nmi = None
    async with asyncio.timeout(10), Ledger(path) as ledger:
        with pytest.raises(ValueError, match="without an NMI"):
            ledger.record_outcome("r1", 0, nameless)
        assert await done_seqs(ledger, "r1") == set()


async def test_lookup_answers_many_keys_and_leaves_unknown_ones_out(path: Path) -> None:
    """lookup reads thousands of keys in one call; keys never seen are absent."""
    async with asyncio.timeout(10), Ledger(path) as ledger:
        for i in range(1500):
            ledger.set_exists(NMI, f"N{i}", exists=i % 2 == 0)
        keys = [(NMI, f"N{i}") for i in range(2000)]
        found = await ledger.lookup(keys)
    assert len(found) == 1500
    assert (NMI, "N1500") not in found
    assert found[(NMI, "N10")].exists is True
    assert found[(NMI, "N11")].exists is False
    assert found[(NMI, "N11")].last_success_hash is None


async def test_resume_reads_what_was_done_and_what_was_in_flight(path: Path) -> None:
    """in_flight, run_items and outcome_counts describe a run stopped midway."""
    async with asyncio.timeout(10), Ledger(path, clock=ticking()) as ledger:
        await start(ledger)
        for seq, result in ((0, Outcome.ACCEPTED), (1, Outcome.REJECTED)):
            ledger.finish_attempt(await attempt(ledger, seq), http_status=200, transaction_id="T")
            ledger.record_outcome("r1", seq, outcome(seq, result))
        sent = await attempt(ledger, 2)  # no answer
        answered = await attempt(ledger, 3)  # answered, outcome never recorded
        ledger.finish_attempt(answered, http_status=200, transaction_id="T3")
        ledger.finish_attempt(await attempt(ledger, 4), http_status=503, transaction_id=None)
        retry = await attempt(ledger, 4)
        await attempt(ledger, 9, run_id="other")

        assert await done_seqs(ledger, "r1") == {0, 1}
        flying = await ledger.in_flight("r1")
        items = [i async for i in ledger.iter_run_items("r1")]
        rejected = [i async for i in ledger.iter_run_items("r1", {"rejected"})]
        none = [i async for i in ledger.iter_run_items("r1", [])]
        counts = await ledger.outcome_counts("r1")

    assert sorted(flying) == [2, 3, 4]
    assert (flying[2].attempt_id, flying[2].finished_at, flying[2].http_status) == (
        sent,
        None,
        None,
    )
    assert (flying[3].attempt_id, flying[3].http_status) == (answered, 200)
    assert flying[3].transaction_id == "T3"
    assert flying[3].finished_at is not None
    assert (flying[4].attempt_id, flying[4].finished_at) == (retry, None)
    assert (flying[2].nmi, flying[2].action, flying[2].content_hash) == (
        "N000000002",
        "create",
        HASH,
    )
    assert [(i.seq, i.outcome) for i in items] == [(0, "accepted"), (1, "rejected")]
    assert items[1].line == outcome(1, Outcome.REJECTED).to_line()
    assert [i.seq for i in rejected] == [1]
    assert none == []
    assert counts == {"accepted": 1, "rejected": 1}


@pytest.mark.parametrize("count", [20, 25])
async def test_run_items_pages_through_a_run_in_seq_order(path: Path, count: int) -> None:
    """iter_run_items reads page by page, and a full last page ends cleanly."""
    results = [Outcome.FAILED, Outcome.ACCEPTED]
    async with asyncio.timeout(10), Ledger(path) as ledger:
        for seq in reversed(range(count)):
            ledger.record_outcome("r1", seq, outcome(seq, results[seq % 2]))
        every = [i.seq async for i in ledger.iter_run_items("r1", page_size=10)]
        failed = [i.seq async for i in ledger.iter_run_items("r1", ["failed"], page_size=10)]
    assert every == list(range(count))
    assert failed == list(range(0, count, 2))


async def test_history_lists_attempts_and_outcomes_across_runs_oldest_first(path: Path) -> None:
    """history interleaves every run's attempts and outcomes for one key, in time order."""
    nmi = "N000000005"
    async with asyncio.timeout(10), Ledger(path, clock=ticking()) as ledger:
        for run_id, answers, result in (
            ("r1", [(503, None), (200, "T1")], Outcome.ACCEPTED),
            ("r2", [(400, "T2")], Outcome.REJECTED),
        ):
            await start(ledger, run_id)
            for http_status, txn in answers:
                attempt_id = await attempt(ledger, 5, run_id=run_id)
                ledger.finish_attempt(attempt_id, http_status=http_status, transaction_id=txn)
            ledger.record_outcome(run_id, 5, outcome(5, result, txn=answers[-1][1]))
        await attempt(ledger, 6, nmi="N000000006")
        events = await ledger.history(NMI, nmi)
    assert [(e.run_id, e.event, e.http_status, e.transaction_id, e.outcome) for e in events] == [
        ("r1", "attempt", 503, None, None),
        ("r1", "attempt", 200, "T1", None),
        ("r1", "outcome", 200, "T1", "accepted"),
        ("r2", "attempt", 400, "T2", None),
        ("r2", "outcome", 400, "T2", "rejected"),
    ]
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert {(e.action, e.content_hash) for e in events} == {("create", HASH)}


async def test_runs_are_recorded_started_finished_and_resumed(path: Path) -> None:
    """start_run/finish_run/get_run keep a run's row; secrets stay masked."""
    clock = ticking()
    settings = {"workers": 8, "out": Path("out"), "client_secret": SecretStr("hunter2")}
    async with asyncio.timeout(10), Ledger(path, clock=clock) as ledger:
        await ledger.start_run(
            run_id="r1", kind="submit", out_dir="out", inputs=["a.jsonl"], settings=settings
        )
        await start(ledger, "r2", parent_run_id="r1")
        await ledger.finish_run("r1", status="finished", summary={"accepted": 3})
        finished = await ledger.get_run("r1")
        child = await ledger.get_run("r2")
        with pytest.raises(ValueError, match="status"):
            await ledger.finish_run("r1", status="done", summary={})
        with pytest.raises(ValueError, match="never started"):
            await ledger.finish_run("nope", status="aborted", summary={})
        await start(ledger, "r1")  # resume
        resumed = await ledger.get_run("r1")
        assert await ledger.get_run("nope") is None
    assert finished is not None
    assert (finished.status, finished.inputs) == ("finished", ["a.jsonl"])
    assert finished.summary == {"accepted": 3}
    assert finished.settings == {"workers": 8, "out": "out", "client_secret": "**********"}
    assert finished.finished_at is not None
    assert child is not None
    assert child.parent_run_id == "r1"
    assert resumed is not None
    assert (resumed.status, resumed.finished_at, resumed.summary) == ("running", None, None)
    assert resumed.created_at == finished.created_at


async def test_reopening_keeps_everything(path: Path) -> None:
    """A second Ledger on the same file sees the first one's runs, items and records."""
    async with asyncio.timeout(10):
        async with Ledger(path) as ledger:
            await start(ledger)
            ledger.record_outcome("r1", 0, outcome(0, Outcome.ACCEPTED, txn="T1"))
            await attempt(ledger, 1)
        async with Ledger(path) as ledger:
            run = await ledger.get_run("r1")
            assert await done_seqs(ledger, "r1") == {0}
            assert list(await ledger.in_flight("r1")) == [1]
            state = await ledger.lookup([(NMI, "N000000000")])
    assert run is not None
    assert state[(NMI, "N000000000")].last_success_txn == "T1"


async def test_exit_commits_queued_writes(path: Path) -> None:
    """Leaving the context commits writes still waiting for their batch."""
    async with asyncio.timeout(10):
        async with Ledger(path, flush_interval_s=60) as ledger:
            ledger.record_outcome("r1", 0, outcome(0, Outcome.FAILED))
        assert peek(path, "SELECT seq, outcome FROM items") == [(0, "failed")]


async def test_exit_commits_queued_writes_when_cancelled(path: Path) -> None:
    """A task cancelled inside the ledger still commits what it queued, and ends the thread."""
    entered = asyncio.Event()

    async def body() -> None:
        async with Ledger(path, flush_interval_s=60) as ledger:
            ledger.record_outcome("r1", 0, outcome(0, Outcome.FAILED))
            entered.set()
            await asyncio.Event().wait()

    async with asyncio.timeout(10):
        task = asyncio.create_task(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert peek(path, "SELECT seq FROM items") == [(0,)]


async def test_drain_waits_only_when_more_than_two_batches_are_queued(path: Path) -> None:
    """drain returns at once for a short queue, and commits a long one before returning."""
    async with asyncio.timeout(10), Ledger(path, batch_max=10, flush_interval_s=60) as ledger:
        for seq in range(20):
            ledger.record_outcome("r1", seq, outcome(seq, Outcome.FAILED))
            await ledger.drain()
        # Two full batches, due at the loop's next iteration: drain never let it come.
        assert peek(path, "SELECT COUNT(*) FROM items") == [(0,)]
        ledger.record_outcome("r1", 20, outcome(20, Outcome.FAILED))
        await ledger.drain()
        assert peek(path, "SELECT COUNT(*) FROM items") == [(21,)]


@pytest.mark.parametrize(("interval", "committed"), [(0, 1), (60, 0)])
async def test_queued_writes_are_committed_after_the_flush_interval(
    path: Path, interval: float, committed: int
) -> None:
    """A write nobody awaits is committed once flush_interval_s has passed, not before."""
    async with asyncio.timeout(10), Ledger(path, flush_interval_s=interval) as ledger:
        ledger.record_outcome("r1", 0, outcome(0, Outcome.FAILED))
        for _ in range(3):  # loop iterations, in which a timer that is due runs
            await asyncio.sleep(0)
        assert peek(path, "SELECT COUNT(*) FROM items") == [(committed,)]


async def test_queued_writes_are_committed_with_the_next_awaited_call(path: Path) -> None:
    """begin_attempt's commit carries the writes queued before it, whatever the interval."""
    async with asyncio.timeout(10), Ledger(path, flush_interval_s=60) as ledger:
        ledger.record_outcome("r1", 0, outcome(0, Outcome.FAILED))
        ledger.set_exists(NMI, "N1", exists=True)
        await attempt(ledger, 1)
        assert peek(path, "SELECT seq FROM items") == [(0,)]
        assert peek(path, "SELECT nmi FROM records") == [("N1",)]


async def test_a_cancelled_begin_attempt_is_still_committed(path: Path) -> None:
    """Cancelled while waiting for its commit, begin_attempt's row is committed all the same."""
    async with asyncio.timeout(10), Ledger(path, flush_interval_s=60) as ledger:
        task = asyncio.create_task(attempt(ledger, 7))
        await asyncio.sleep(0)  # the task queues its row and waits for the commit
        task.cancel()
        assert peek(path, "SELECT seq FROM attempts") == []
        with pytest.raises(asyncio.CancelledError):
            await task
        assert peek(path, "SELECT seq FROM attempts") == [(7,)]


async def test_a_failed_batch_fails_every_call_in_it_and_after_it(path: Path) -> None:
    """One failing write rolls back its batch; its callers and every later one get LedgerError."""
    async with asyncio.timeout(10):
        stack = AsyncExitStack()
        ledger = await stack.enter_async_context(Ledger(path, batch_max=3, flush_interval_s=60))
        await start(ledger)
        with closing(sqlite3.connect(path)) as other:
            other.execute("DROP TABLE items")
            other.commit()

        async def failing_write() -> None:
            ledger.record_outcome("r1", 0, outcome(0, Outcome.FAILED))

        # Tasks run in the order created, all before the commit they schedule: a batch of
        # [attempt 1, the failing write, get_run], then one of [attempt 2].
        calls = [
            asyncio.create_task(attempt(ledger, 1)),
            asyncio.create_task(failing_write()),
            asyncio.create_task(ledger.get_run("r1")),
            asyncio.create_task(attempt(ledger, 2)),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        del results[1]  # the write itself raised nothing: nobody awaited it
        assert [type(result) for result in results] == [LedgerError] * 3, results
        assert all("no such table: items" in str(result) for result in results)
        # Attempt 1 was rolled back with its batch, and attempt 2 never ran.
        assert peek(path, "SELECT COUNT(*) FROM attempts") == [(0,)]
        with pytest.raises(LedgerError, match="no such table: items"):
            await ledger.get_run("r1")
        with pytest.raises(LedgerError, match="no such table: items"):
            ledger.finish_attempt(1, http_status=200, transaction_id="T1")
        with pytest.raises(LedgerError, match="no such table: items"):
            await ledger.flush()
        with pytest.raises(LedgerError, match="no such table: items"):
            await stack.aclose()


async def test_reads_alone_take_no_write_lock(path: Path) -> None:
    """A batch of only reads, all `wem-der report` runs, does not wait for a writer's lock."""
    async with asyncio.timeout(10):
        async with Ledger(path) as ledger:
            await start(ledger)
        async with Ledger(path, busy_timeout_s=0.05) as ledger:
            with closing(sqlite3.connect(path, isolation_level=None)) as other:
                other.execute("BEGIN IMMEDIATE")  # a run's batch, holding the write lock
                run = await ledger.get_run("r1")
                other.execute("ROLLBACK")
    assert run is not None


async def test_checkpoints_run_in_the_ledger_thread_one_at_a_time(path: Path) -> None:
    """Past checkpoint_pages a checkpoint starts in the thread; none other starts meanwhile."""
    threads: list[int] = []
    started, release = threading.Event(), threading.Event()

    class Held(LedgerHooks):
        def checkpointing(self) -> None:
            threads.append(threading.get_ident())
            started.set()
            release.wait(10)

    async with asyncio.timeout(10), Ledger(path, checkpoint_pages=4, hooks=Held()) as ledger:
        try:
            for seq in range(200):
                ledger.record_outcome("r1", seq, outcome(seq, Outcome.FAILED))
                if seq % 20 == 19:  # each commit takes the WAL further past 4 pages
                    await ledger.flush()
                if seq == 99:
                    assert await asyncio.to_thread(started.wait, 10)
            held_up = list(threads)  # while the first checkpoint is held, the loop commits
        finally:
            release.set()
    assert len(held_up) == 1
    assert held_up[0] != threading.get_ident()
    assert threads == [held_up[0]] * 2  # and the last one, at close, in the same thread


async def test_checkpoints_keep_the_wal_short(path: Path, tmp_path: Path) -> None:
    """The WAL is copied into the database past checkpoint_pages and then starts over."""
    checkpointed = asyncio.Event()

    class Signalling(LedgerHooks):
        def checkpointed(self) -> None:
            # Once the loop has heard the checkpoint is over: a signal from the thread
            # could wake this test first, whose next commit would then find one still
            # running and start none.
            checkpointed.set()

    alone = tmp_path / "database-alone.sqlite3"
    sizes = []
    async with asyncio.timeout(10), Ledger(path, checkpoint_pages=8, hooks=Signalling()) as ledger:
        for rounds in range(10):
            for seq in range(rounds * 50, rounds * 50 + 50):
                ledger.record_outcome("r1", seq, outcome(seq, Outcome.FAILED))
            await ledger.flush()  # a commit of more than 8 pages
            await checkpointed.wait()
            checkpointed.clear()
            sizes.append(wal_of(path).stat().st_size)
        shutil.copyfile(path, alone)  # the database file without its WAL
        ledger.record_outcome("r1", 500, outcome(500, Outcome.FAILED))
        await ledger.flush()  # the WAL starts over and is cut back
        restarted = wal_of(path).stat().st_size
    # Without checkpoints the WAL would grow by a round's pages every round.
    assert max(sizes) < 2 * sizes[0], sizes
    assert peek(alone, "SELECT COUNT(*) FROM items") == [(500,)]
    [(page_size,)] = peek(path, "PRAGMA page_size")
    assert restarted <= 32 + 8 * (24 + page_size)


async def test_a_failed_checkpoint_stops_the_ledger(path: Path) -> None:
    """A checkpoint that fails (the disk: PASSIVE never waits for a lock) stops the ledger."""

    class Failing(LedgerHooks):
        def checkpointing(self) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    async with asyncio.timeout(10):
        stack = AsyncExitStack()
        ledger = await stack.enter_async_context(Ledger(path, checkpoint_pages=1, hooks=Failing()))

        async def flush_until_it_fails() -> None:
            while True:  # until the thread's failure reaches the loop
                await ledger.flush()

        await start(ledger)  # the WAL now holds more than a page: a checkpoint starts
        with pytest.raises(LedgerError, match=r"writing the ledger .* failed \(disk I/O error\)"):
            await flush_until_it_fails()
        with pytest.raises(LedgerError, match="disk I/O error"):
            await stack.aclose()


async def test_no_checkpoint_runs_inside_a_commit(path: Path, tmp_path: Path) -> None:
    """SQLite's own auto-checkpoint, which would run in the commit crossing 1000 pages on
    the event loop, is off."""
    alone = tmp_path / "database-alone.sqlite3"
    async with asyncio.timeout(10):
        async with Ledger(path):
            pass
        async with Ledger(path, checkpoint_pages=100_000) as ledger:
            for seq in range(1200):
                large = outcome(seq, Outcome.FAILED)
                large.reason = "x" * 4000  # a page or more per row
                ledger.record_outcome("r1", seq, large)
                if seq % 100 == 99:
                    await ledger.flush()
            shutil.copyfile(path, alone)  # the database file without its WAL
    assert peek(alone, "SELECT COUNT(*) FROM items") == [(0,)]


async def test_close_checkpoints_while_another_process_reads(path: Path, tmp_path: Path) -> None:
    """Closing copies the WAL into the database even when SQLite would not (not the last
    connection to the file, as when `wem-der report` is reading it)."""
    alone = tmp_path / "database-alone.sqlite3"
    async with asyncio.timeout(10):
        async with Ledger(path):
            pass
        with closing(sqlite3.connect(path)) as reader:
            reader.execute("SELECT COUNT(*) FROM runs").fetchall()  # holds the file open
            async with Ledger(path) as ledger:
                for seq in range(10):
                    ledger.record_outcome("r1", seq, outcome(seq, Outcome.FAILED))
            assert wal_of(path).exists()
            shutil.copyfile(path, alone)
    assert peek(alone, "SELECT COUNT(*) FROM items") == [(10,)]


async def test_cancelled_while_opening_leaves_nothing_open(path: Path) -> None:
    """Cancelling __aenter__ mid-open closes what the thread opens, and ends the thread."""
    entered, proceed = threading.Event(), threading.Event()

    class Gated(LedgerHooks):
        def opening(self, path: Path) -> None:
            entered.set()
            proceed.wait(10)

    async with asyncio.timeout(10):
        opening = asyncio.create_task(Ledger(path, hooks=Gated()).__aenter__())
        assert await asyncio.to_thread(entered.wait, 10)
        opening.cancel()
        await asyncio.sleep(0)  # the cancellation reaches __aenter__ while the open goes on
        proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await opening
    assert path.exists()  # the open did happen
    assert not wal_of(path).exists()  # SQLite removes it as the file's last connection closes


async def test_a_failed_write_stops_the_ledger_loudly(path: Path) -> None:
    """A queued write that fails in the thread is raised at the next await and at exit."""
    async with asyncio.timeout(10):
        stack = AsyncExitStack()
        ledger = await stack.enter_async_context(Ledger(path))
        with closing(sqlite3.connect(path)) as other:
            other.execute("DROP TABLE items")
            other.commit()
        ledger.record_outcome("r1", 0, outcome(0, Outcome.FAILED))
        with pytest.raises(LedgerError, match=r"writing the ledger .* failed"):
            await ledger.flush()
        with pytest.raises(LedgerError, match="no such table: items"):
            ledger.set_exists(NMI, "N1", exists=True)
        with pytest.raises(LedgerError, match="no such table: items"):
            await stack.aclose()


async def test_cancellation_outlives_a_failed_ledger(path: Path) -> None:
    """Cancelled with a failed ledger: CancelledError still propagates, carrying the failure."""
    failed = asyncio.Event()

    async def body() -> None:
        async with Ledger(path) as ledger:
            with closing(sqlite3.connect(path)) as other:
                other.execute("DROP TABLE items")
                other.commit()
            ledger.record_outcome("r1", 0, outcome(0, Outcome.FAILED))
            with pytest.raises(LedgerError):
                await ledger.flush()
            failed.set()
            await asyncio.Event().wait()

    async with asyncio.timeout(10):
        task = asyncio.create_task(body())
        await failed.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as cancelled:
            await task
    assert "no such table: items" in " ".join(getattr(cancelled.value, "__notes__", []))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(overwrite_with_garbage, "file is not a database"), (tear_the_items_table, "malformed")],
)
async def test_a_damaged_file_is_refused_clearly(
    path: Path, damage: Callable[[Path], None], reason: str
) -> None:
    """A non-SQLite or corrupt file raises LedgerError saying what to do, and leaks nothing."""
    async with asyncio.timeout(10), Ledger(path) as ledger:
        for seq in range(100):
            ledger.record_outcome("r1", seq, outcome(seq, Outcome.FAILED))
    damage(path)
    with pytest.raises(LedgerError, match=f"is not a usable ledger: .*{reason}.*move it aside"):
        async with asyncio.timeout(10), Ledger(path):
            pass


async def test_another_programs_database_is_left_alone(path: Path) -> None:
    """An SQLite file without the ledger's meta table is refused, not written into."""
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(LedgerError, match="database of another program"):
        async with asyncio.timeout(10), Ledger(path):
            pass
    assert peek(path, "SELECT name FROM sqlite_master") == [("photos",)]


async def test_a_ledger_locked_by_another_run_is_refused(path: Path) -> None:
    """A file another connection holds exclusively raises LedgerError saying "locked"."""
    async with asyncio.timeout(10), Ledger(path):
        pass
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(LedgerError, match="is locked by another wem-der run"):
            async with asyncio.timeout(10), Ledger(path, busy_timeout_s=0.05):
                pass
        other.execute("ROLLBACK")


async def test_a_newer_schema_is_refused(path: Path) -> None:
    """A ledger written by a newer version is refused with a clear LedgerError."""
    async with asyncio.timeout(10), Ledger(path):
        pass
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        conn.commit()
    with pytest.raises(LedgerError, match=r"newer wem-der .*schema 99"):
        async with asyncio.timeout(10), Ledger(path):
            pass


async def test_methods_need_an_open_ledger(path: Path) -> None:
    """Using a Ledger outside `async with` is a programming error, not a silent no-op."""
    ledger = Ledger(path)
    with pytest.raises(RuntimeError, match="not open"):
        ledger.set_exists(NMI, "N1", exists=True)
    async with asyncio.timeout(10), ledger:
        pass
    with pytest.raises(RuntimeError, match="not open"):
        await ledger.flush()


def test_resume_queries_read_indexes_not_tables(tmp_path: Path) -> None:
    """A resume's reads (a run's items page by page, and what was in flight) are answered
    from indexes, whatever the ledger's size."""
    with closing(sqlite3.connect(tmp_path / "l.sqlite3")) as conn:
        for statement in ledger_schema.DDL:
            conn.execute(statement)
        plans = {
            name: " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))
            for name, query, params in (
                ("done", ledger_schema.ITEMS_PAGE.format(filter=""), ("r", -1, 1000)),
                ("flying", ledger_schema.IN_FLIGHT, ("r",)),
            )
        }
    assert "USING INDEX items_by_run (run_id=? AND seq>?)" in plans["done"]
    assert "USING INDEX attempts_unsettled" in plans["flying"]


CRASHING_RUN = """
import asyncio, sys
from pathlib import Path
from wem_der.ledger.store import Ledger

async def main():
    async with Ledger(Path(sys.argv[1]), flush_interval_s=60) as ledger:
        await ledger.start_run(run_id="r1", kind="submit", out_dir="o", inputs=[], settings={})
        attempt_id = await ledger.begin_attempt(
            run_id="r1", seq=3, kind="nmi", nmi="N3", action="create", content_hash="h"
        )
        print(attempt_id, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_run_leaves_its_attempt_in_flight(path: Path) -> None:
    """SIGKILL right after begin_attempt: reopening shows the attempt in flight."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    async with asyncio.timeout(10):
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", CRASHING_RUN, str(path)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
        finally:
            proc.kill()
            _, err = await proc.communicate()
        assert line.strip().isdigit(), err.decode()
        async with Ledger(path) as ledger:
            flying = await ledger.in_flight("r1")
            run = await ledger.get_run("r1")
    assert list(flying) == [3]
    assert flying[3].attempt_id == int(line)
    assert flying[3].finished_at is None
    assert run is not None
    assert run.status == "running"


def test_processes_opening_a_new_ledger_together_all_open_it(tmp_path: Path) -> None:
    """Jobs started together on an empty --state-dir all open the new ledger: SQLite refuses
    one of two switching a new file to WAL at once without waiting, and the open tries
    again instead of calling the ledger locked."""
    failures: list[str] = []
    for attempt in range(300):
        path = tmp_path / f"{attempt}" / "ledger.sqlite3"
        start = threading.Barrier(6)

        def open_it(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait(timeout=10)
            try:
                ledger_schema.open_ledger(path, busy_timeout_s=5).close()
            except LedgerError as exc:
                failures.append(str(exc))

        openers = [threading.Thread(target=open_it) for _ in range(6)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(timeout=30)
    assert failures == []
