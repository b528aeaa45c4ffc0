"""The stages of a run: items -> pre-flight -> per-NMI ordering -> workers -> outcomes.

    producer --PreparedRecord--> [bounded queue] --> workers xN --> finish()
                                                        (Submitter)    sink + ledger + progress

Records of one NMI are never in flight together: while one is, later ones wait in that
NMI's deque and the worker that finishes it takes the next. A stop (Ctrl-C, or a run that
must abort) lets requests on the wire finish, then records every remaining input record
as "not sent" in the outcome files, but not as final in the ledger, so `resume` sends them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping
from dataclasses import dataclass

import structlog

from pipeline.errors import RunAborted
from pipeline.ledger import Ledger
from pipeline.models import RecordKind
from pipeline.outcomes import Action, Outcome, OutcomeRecord, PreparedRecord, SourceItem
from pipeline.preflight import Preflight, nmi_of
from pipeline.recent import Recent
from pipeline.sinks import OutcomeSink
from pipeline.workers import StoppedByAnswer, Submitter

log = structlog.get_logger()

# How many pre-flighted records are looked up in the ledger at once (delta and existence).
LOOKUP_CHUNK = 256


class Interrupted(Exception):
    """The run is stopping: the record waiting to be retried is left for `resume`."""


def interruptible(
    stop: asyncio.Event, sleep: Callable[[float], Awaitable[None]]
) -> Callable[[float], Awaitable[None]]:
    """A sleep between retries that ends early, with `Interrupted`, when the run stops."""

    async def pause(delay: float) -> None:
        if stop.is_set():
            raise Interrupted
        waiter = asyncio.ensure_future(stop.wait())
        sleeper = asyncio.ensure_future(sleep(delay))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        if stop.is_set():
            raise Interrupted

    return pause


@dataclass(frozen=True)
class Lineage:
    """Where a re-submission comes from, written into every outcome line."""

    parent_run_id: str


class Engine:
    """Runs the stages for one run; `abort` holds why it stopped early, if it did."""

    def __init__(
        self,
        *,
        run_id: str,
        preflight: Preflight,
        submitter: Submitter,
        ledger: Ledger,
        sink: OutcomeSink,
        concurrency: int,
        stop: asyncio.Event,
        on_outcome: Callable[[OutcomeRecord], None],
        force: bool = False,
        skip_seqs: Container[int] = (),
        read_back_seqs: Mapping[int, Action] | None = None,
        lineage: Lineage | None = None,
    ) -> None:
        self._run_id = run_id
        self._preflight = preflight
        self._submitter = submitter
        self._ledger = ledger
        self._sink = sink
        self._concurrency = concurrency
        self._stop = stop
        self._on_outcome = on_outcome
        self._force = force
        self._skip_seqs = skip_seqs
        # seq -> the action of the write a dead process had on the wire for it.
        self._read_back_seqs = read_back_seqs or {}
        self._lineage = lineage
        self.abort: RunAborted | None = None
        # Outcomes left not final in the ledger, for resume to finish: the records not sent,
        # and the one whose answer stopped the run.
        self.not_sent = 0
        # Bounds the records held between the producer and the end of their submission
        # (queued or waiting behind an earlier record of the same NMI): backpressure.
        held = concurrency * 4
        self._slots = asyncio.Semaphore(held)
        self._queue: asyncio.Queue[PreparedRecord | None] = asyncio.Queue(concurrency * 2)
        self._busy: dict[tuple[RecordKind, str], deque[PreparedRecord]] = {}
        # NMIs dispatched or finished lately. A record's ledger state was looked up with its
        # chunk; it may be stale only if a record of the same NMI was busy then, or finished
        # since. Between a lookup and a dispatch at most one chunk is dispatched and at most
        # `held` records finish, so keys touched within twice that are all that can matter.
        self._recent: Recent[tuple[RecordKind, str], None] = Recent(2 * (held + LOOKUP_CHUNK))

    async def run(self, items: AsyncIterator[tuple[int, SourceItem]]) -> None:
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(self._worker()) for _ in range(self._concurrency)]
            await self._produce(items)
            for _ in workers:
                await self._queue.put(None)

    def _finish(self, seq: int, outcome: OutcomeRecord, *, final: bool = True) -> None:
        outcome.run_id = self._run_id
        if self._lineage is not None and outcome.previous_run_id is None:
            outcome.previous_run_id = self._lineage.parent_run_id
        line = self._sink.write(outcome)
        if final:
            self._ledger.record_outcome(self._run_id, seq, outcome, line=line)
        else:
            self.not_sent += 1
        self._on_outcome(outcome)
        # The one canonical event per record: ids and timing, never the payload.
        log.info(
            "record.completed",
            nmi=outcome.nmi,
            outcome=outcome.outcome.value,
            action=outcome.action.value if outcome.action else None,
            http_status=outcome.http_status,
            transaction_id=outcome.transaction_id,
            attempts=outcome.attempts,
            latency_ms=outcome.latency_ms,
            source=str(outcome.source),
            reason=outcome.reason,
        )

    def _not_sent(self, seq: int, outcome: OutcomeRecord) -> None:
        why = f"; {self.abort}" if self.abort else ""
        outcome.outcome = Outcome.FAILED
        outcome.reason = f"not sent: the run stopped before this record was done{why}"
        self._finish(seq, outcome, final=False)

    async def _produce(self, items: AsyncIterator[tuple[int, SourceItem]]) -> None:
        chunk: list[PreparedRecord] = []
        async for seq, item in items:
            if seq in self._skip_seqs:
                continue
            if self._stop.is_set():
                kind = self._preflight.kind
                self._not_sent(
                    seq, OutcomeRecord(kind, nmi_of(item.value), item.source, Outcome.FAILED)
                )
                continue
            checked = self._preflight.check(seq, item)
            if isinstance(checked, OutcomeRecord):
                self._finish(seq, checked)
                # A file of invalid records sends nothing, so no begin_attempt yields to the
                # loop that commits the ledger's queue: yield here once it has grown.
                await self._ledger.drain()
                continue
            chunk.append(checked)
            if len(chunk) >= LOOKUP_CHUNK:
                await self._dispatch(chunk)
                chunk = []
        await self._dispatch(chunk)

    async def _dispatch(self, chunk: list[PreparedRecord]) -> None:
        if not chunk:
            return
        states = await self._ledger.lookup([(r.kind.value, r.nmi) for r in chunk])
        for rec in chunk:
            key = (rec.kind, rec.nmi)
            state = states.get((rec.kind.value, rec.nmi))
            # The ledger's account of the register is current only if no record of this
            # NMI is in the run's hands or has just left them.
            current = key not in self._busy and key not in self._recent
            self._recent[key] = None
            if self._stop.is_set():
                self._not_sent(rec.seq, _pending(rec))
                continue
            if (
                state is not None
                and current
                and not self._force
                and rec.seq not in self._read_back_seqs
                and state.last_success_hash == rec.content_hash
            ):
                self._finish(rec.seq, _skipped(rec, state.last_success_run, state.last_success_txn))
                await self._ledger.drain()
                continue
            rec.exists = state.exists if state else None
            await self._slots.acquire()
            waiting = self._busy.get(key)
            if waiting is not None:
                waiting.append(rec)
            else:
                self._busy[key] = deque()
                await self._queue.put(rec)

    async def _worker(self) -> None:
        while (rec := await self._queue.get()) is not None:
            current: PreparedRecord | None = rec
            while current is not None:
                await self._submit(current)
                self._slots.release()
                key = (current.kind, current.nmi)
                self._recent[key] = None
                waiting = self._busy[key]
                if waiting:
                    # Its ledger state predates the record just finished; the submitter
                    # consults what that one learnt (`known`) before it.
                    current = waiting.popleft()
                else:
                    current = None
                    del self._busy[key]

    async def _submit(self, rec: PreparedRecord) -> None:
        if self._stop.is_set():
            self._not_sent(rec.seq, _pending(rec))
            return
        try:
            outcome = await self._submitter.submit(
                rec, sent_action=self._read_back_seqs.get(rec.seq)
            )
        except Interrupted:
            self._not_sent(rec.seq, _pending(rec))
            return
        except RunAborted as exc:
            if self.abort is None:
                self.abort = exc
            self._stop.set()
            if isinstance(exc, StoppedByAnswer):
                # Not final either: `resume` reads the record back or sends it again.
                self._finish(rec.seq, exc.outcome, final=False)
            else:
                self._not_sent(rec.seq, _pending(rec))
            return
        self._finish(rec.seq, outcome)


def _pending(rec: PreparedRecord) -> OutcomeRecord:
    return OutcomeRecord(
        rec.kind, rec.nmi, rec.source, Outcome.FAILED, content_hash=rec.content_hash
    )


def _skipped(rec: PreparedRecord, run_id: str | None, txn: str | None) -> OutcomeRecord:
    return OutcomeRecord(
        rec.kind,
        rec.nmi,
        rec.source,
        Outcome.SKIPPED,
        content_hash=rec.content_hash,
        reason="unchanged since its last accepted submission (use --force to send it anyway)",
        previous_run_id=run_id,
        previous_transaction_id=txn,
    )
