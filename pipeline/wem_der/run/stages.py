"""The stages of a run: items -> pre-flight -> per-NMI ordering -> workers -> outcomes.

    producer --PreparedRecord--> [bounded queue] --> workers xN --> finish()
                                                        (Submitter)    sink + ledger + progress

Records of one NMI are never in flight together: while one is, later ones wait in that
NMI's deque and the worker that finishes it takes the next. What the register holds for an
NMI (the ledger's last success, or what this run has learnt since) decides whether a
record is sent at all: one with that content is skipped, whether its last accepted
submission was in an earlier run (unless --force) or on an earlier line of this one
(always: a line given twice is sent once). Where the ledger knows the NMI on several lines
of its latest run, a record that differs is deferred until a later line of it supersedes
it, or sent when the input ends without one, so that an unchanged input with two versions
of an NMI sends nothing the next night either. A record the ledger cannot decide (none of
its NMI's versions is known accepted) is planned from the register, when the run has a
reader: its current version is read in bulk with its chunk's, and `register/decide.py`
skips the record, or sends it as a create or as an update. A stop (Ctrl-C, or a run that
must abort) lets requests on the wire finish, then records every remaining input record
as "not sent" in the outcome files, but not as final in the ledger, so `resume` sends them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping
from dataclasses import dataclass

import structlog

from wem_der.errors import RunAborted
from wem_der.files.pathtext import to_text
from wem_der.ledger.outcome_files import OutcomeSink
from wem_der.ledger.store import Ledger, RecordState
from wem_der.read.sources import STDIN
from wem_der.records.outcomes import (
    Action,
    Outcome,
    OutcomeRecord,
    PreparedRecord,
    SourceItem,
    SourceRef,
)
from wem_der.records.preflight import Preflight, nmi_of
from wem_der.records.shapes import RecordKind
from wem_der.register.decide import decide
from wem_der.register.search import Held, RegisterReader
from wem_der.send.recent import Recent
from wem_der.send.submitter import StoppedByAnswer, Submitter
from wem_der.send.waiting import sleep_unless

log = structlog.get_logger()

# How many pre-flighted records are looked up in the ledger at once (delta and existence).
LOOKUP_CHUNK = 256
# How many records may wait for a later line of their NMI (see `Engine._admit`); past it,
# the one that has waited longest is sent. It bounds the memory they hold.
MAX_DEFERRED = 4096
_SENT_SUCCESS = frozenset({Outcome.ACCEPTED, Outcome.CONDITIONAL})


class Interrupted(Exception):
    """The run is stopping: the record waiting to be retried is left for `resume`."""


def interruptible(
    stop: asyncio.Event, sleep: Callable[[float], Awaitable[None]]
) -> Callable[[float], Awaitable[None]]:
    """A sleep between retries that ends early, with `Interrupted`, when the run stops."""

    async def pause(delay: float) -> None:
        if stop.is_set():
            raise Interrupted
        await sleep_unless(stop, sleep, delay)
        if stop.is_set():
            raise Interrupted

    return pause


@dataclass(frozen=True, slots=True)
class _Holds:
    """What the register holds for an NMI, as far as the run knows: the hash of that content,
    the run and transaction whose answer says so, and the line of this run that sent it or
    found it there (None: no line of this run did)."""

    content_hash: str
    run_id: str | None
    transaction_id: str | None
    line: SourceRef | None


def _held_by(state: RecordState) -> _Holds | None:
    if state.last_success_hash is None:
        return None
    return _Holds(
        state.last_success_hash,
        state.last_success_run,
        state.last_success_txn,
        state.earlier_line,
    )


def _holds_after(outcome: OutcomeRecord | None) -> _Holds | None:
    """What the register holds once `outcome` is final (None: not known, or not final)."""
    if outcome is None or outcome.outcome not in _SENT_SUCCESS or outcome.content_hash is None:
        return None
    return _Holds(outcome.content_hash, outcome.run_id, outcome.transaction_id, outcome.source)


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
        on_settled: Callable[[OutcomeRecord, bool], None],
        force: bool = False,
        skip_seqs: Container[int] = (),
        read_back_seqs: Mapping[int, Action] | None = None,
        lineage: Lineage | None = None,
        reader: RegisterReader | None = None,
        carry_register_ids: bool = True,
    ) -> None:
        self._run_id = run_id
        self._preflight = preflight
        self._submitter = submitter
        self._ledger = ledger
        self._sink = sink
        self._concurrency = concurrency
        self._stop = stop
        self._on_outcome = on_outcome
        # Each outcome again, with whether it is final (False: left for `resume`): the
        # metrics count the records not sent apart from those that failed.
        self._on_settled = on_settled
        self._force = force
        self._skip_seqs = skip_seqs
        # seq -> the action of the write a dead process had on the wire for it.
        self._read_back_seqs = read_back_seqs or {}
        self._lineage = lineage
        # Reads what the register holds of the records the ledger cannot decide (None: the
        # ledger alone decides); see `_read_register`.
        self._reader = None if force else reader
        self._carry_register_ids = carry_register_ids
        # Records a chunk holds: with a reader, whole searches of its NMIs where they fit,
        # so that an input the ledger knows nothing of costs one search per batch_size.
        batch = LOOKUP_CHUNK if self._reader is None else self._reader.batch_size
        self._chunk = LOOKUP_CHUNK // batch * batch if batch <= LOOKUP_CHUNK else LOOKUP_CHUNK
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
        # NMIs dispatched or finished lately, with what the register holds for each as this
        # run learnt it (None: not known; a record of it is on its way, or was not stored).
        # A record's ledger state was looked up with its chunk; it may be stale only if a
        # record of the same NMI was busy then, or finished since. Between a lookup and a
        # dispatch at most one chunk is dispatched and at most `held` records finish, so keys
        # touched within twice that are all that can matter.
        self._recent: Recent[tuple[RecordKind, str], _Holds | None] = Recent(
            2 * (held + LOOKUP_CHUNK)
        )
        # Records waiting for a later line of their NMI, oldest first (see `_admit`).
        self._deferred: dict[tuple[RecordKind, str], PreparedRecord] = {}

    async def run(self, items: AsyncIterator[tuple[int, SourceItem]]) -> None:
        # Items reach pre-flight through `arrived`, filled by a task of their own, so that
        # the producer can tell when no further item is ready (see `_produce`).
        arrived: asyncio.Queue[tuple[int, SourceItem] | None] = asyncio.Queue(LOOKUP_CHUNK)
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(self._worker()) for _ in range(self._concurrency)]
            group.create_task(_forward(items, arrived))
            await self._produce(arrived)
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
        self._on_settled(outcome, final)
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

    def _not_sent(self, seq: int, outcome: OutcomeRecord, problem: str | None = None) -> None:
        """`problem`: what was wrong with the input item, which no check will now report."""
        why = "".join(f"; {text}" for text in (problem, self.abort) if text)
        outcome.outcome = Outcome.FAILED
        outcome.reason = f"not sent: the run stopped before this record was done{why}"
        self._finish(seq, outcome, final=False)

    async def _produce(self, arrived: asyncio.Queue[tuple[int, SourceItem] | None]) -> None:
        chunk: list[PreparedRecord] = []
        while (pair := await arrived.get()) is not None:
            checked = await self._check(*pair)
            if checked is not None:
                chunk.append(checked)
            # A chunk goes when it is full, or when no further item is ready: a record that
            # a slow producer has just written must not wait for the ones after it.
            if chunk and (len(chunk) >= self._chunk or arrived.empty()):
                await self._dispatch(chunk)
                chunk = []
        await self._dispatch(chunk)
        # The input has ended: a deferred record has no later line of its NMI after all.
        while self._deferred:
            rec = self._deferred.pop(next(iter(self._deferred)))
            if self._stop.is_set():
                self._not_sent(rec.seq, _pending(rec))
            else:
                await self._send(rec)

    async def _check(self, seq: int, item: SourceItem) -> PreparedRecord | None:
        """Pre-flight `item`: the record to send, or None when its outcome is settled here."""
        if seq in self._skip_seqs:
            return None
        if self._stop.is_set():
            outcome = OutcomeRecord(
                self._preflight.kind, nmi_of(item.value), item.source, Outcome.FAILED
            )
            self._not_sent(seq, outcome, item.error)
            return None
        checked = self._preflight.check(seq, item)
        if isinstance(checked, OutcomeRecord):
            self._finish(seq, checked)
            # A file of invalid records sends nothing, so no begin_attempt yields to the
            # loop that commits the ledger's queue: yield here once it has grown.
            await self._ledger.drain()
            return None
        return checked

    async def _dispatch(self, chunk: list[PreparedRecord]) -> None:
        if not chunk:
            return
        states = await self._ledger.delta_states(
            self._run_id, [(r.kind.value, r.nmi, r.content_hash) for r in chunk]
        )
        read = await self._read_register(chunk, states)
        for rec in chunk:
            if self._stop.is_set():
                self._not_sent(rec.seq, _pending(rec))
                continue
            key = (rec.kind, rec.nmi)
            state = states[(rec.kind.value, rec.nmi)]
            rec.exists = state.exists
            # A record of an NMI this run has sent or found meanwhile is decided by that.
            if (
                rec.nmi in read
                and rec.seq not in self._read_back_seqs
                and key not in self._busy
                and key not in self._recent
            ):
                held = read[rec.nmi]
                skipped = decide(rec, held, carry_register_ids=self._carry_register_ids)
                if skipped is not None:
                    self._recent[key] = _Holds(
                        rec.content_hash, None, skipped.transaction_id, rec.source
                    )
                    self._finish(rec.seq, skipped)
                    await self._ledger.drain()
                    continue
            if key in self._busy:
                await self._slots.acquire()
                # Checked again: the record ahead may have finished while this one waited.
                waiting = self._busy.get(key)
                if waiting is not None:
                    # Decided when the record ahead is done, by what it leaves (`_next`).
                    waiting.append(rec)
                    continue
                self._slots.release()
            await self._admit(rec, state)

    async def _read_register(
        self, chunk: list[PreparedRecord], states: Mapping[tuple[str, str], RecordState]
    ) -> dict[str, Held | None]:
        """What the register holds (None: nothing) of each NMI of `chunk` that the ledger
        cannot decide: no accepted or conditional version of it is in the ledger, no record
        of it is on its way, and none had its write on the wire when a run died (that one
        is read back by the submitter). Read in bulk, `reader.batch_size` NMIs a request;
        the NMIs of a search that fails are left out, and planned by the ledger as ever."""
        if self._reader is None or self._stop.is_set():
            return {}
        nmis = list(
            dict.fromkeys(
                rec.nmi
                for rec in chunk
                if states[(rec.kind.value, rec.nmi)].last_success_hash is None
                and rec.seq not in self._read_back_seqs
                and (rec.kind, rec.nmi) not in self._busy
                and (rec.kind, rec.nmi) not in self._recent
                # The search's `nmi` is a comma-separated list: such an NMI cannot be asked.
                and rec.nmi
                and "," not in rec.nmi
            )
        )
        size = self._reader.batch_size
        try:
            async with asyncio.TaskGroup() as group:
                searches = [
                    group.create_task(self._reader.lookup(nmis[at : at + size]))
                    for at in range(0, len(nmis), size)
                ]
        except* Interrupted:
            # Stopped while a search waited to be retried: the chunk is not sent (`_dispatch`).
            searches = []
        except* RunAborted as group:
            # As a write's would (`_submit`): the run stops, and its records are not sent.
            first = group.exceptions[0]
            if self.abort is None and isinstance(first, RunAborted):
                self.abort = first
            self._stop.set()
            searches = []
        read: dict[str, Held | None] = {}
        for search in searches:
            lookup = search.result()
            if lookup.error is None:
                read.update((nmi, lookup.held.get(nmi)) for nmi in lookup.nmis)
        return read

    async def _admit(self, rec: PreparedRecord, state: RecordState) -> None:
        """Skip, defer or send `rec`, whose NMI has no record in flight.

        Skipped if the register holds its content (`_skip`). Deferred if the ledger knows
        its NMI on several lines of the latest run that recorded it: a later line of the
        NMI is then expected here too, and the later line wins, so sending this one would
        only add a version that the next one replaces. The later line supersedes it (it
        is skipped, saying so); if none comes, it is sent when the input ends.
        """
        key = (rec.kind, rec.nmi)
        superseded = self._deferred.pop(key, None)
        if superseded is not None:
            self._finish(superseded.seq, _superseded(superseded, rec))
        holds = self._recent.get(key) if key in self._recent else _held_by(state)
        skipped = self._skip(rec, holds)
        if skipped is not None:
            self._finish(rec.seq, skipped)
            await self._ledger.drain()
        elif state.repeated and not self._force and rec.seq not in self._read_back_seqs:
            self._deferred[key] = rec
            if len(self._deferred) > MAX_DEFERRED:
                await self._send(self._deferred.pop(next(iter(self._deferred))))
        else:
            await self._send(rec)

    def _skip(self, rec: PreparedRecord, holds: _Holds | None) -> OutcomeRecord | None:
        """The skipped outcome of `rec` if the register holds its content, else None.

        A duplicate of an earlier line of this run is skipped even with --force: this run
        has just sent it, or found it unchanged. A record whose write a dead process had on
        the wire is never skipped: it is read back first.
        """
        if (
            holds is None
            or holds.content_hash != rec.content_hash
            or rec.seq in self._read_back_seqs
        ):
            return None
        if holds.line is not None:
            reason = (
                f"duplicates {_line_of(holds.line)} (the same NMI with the same content):"
                " the register holds it already, so it is not sent"
            )
        elif not self._force:
            reason = "unchanged since its last accepted submission (use --force to send it anyway)"
            holds = _Holds(holds.content_hash, holds.run_id, holds.transaction_id, rec.source)
        else:
            return None
        self._recent[(rec.kind, rec.nmi)] = holds
        return rec.skipped(
            reason,
            previous_run_id=holds.run_id,
            previous_transaction_id=holds.transaction_id,
        )

    async def _send(self, rec: PreparedRecord) -> None:
        """Queue `rec`, whose NMI has no record in flight, for a worker."""
        key = (rec.kind, rec.nmi)
        self._recent[key] = None
        await self._slots.acquire()
        self._busy[key] = deque()
        await self._queue.put(rec)

    async def _worker(self) -> None:
        while (rec := await self._queue.get()) is not None:
            current: PreparedRecord | None = rec
            while current is not None:
                key = (current.kind, current.nmi)
                self._recent[key] = _holds_after(await self._submit(current))
                self._slots.release()
                current = self._next(key)

    def _next(self, key: tuple[RecordKind, str]) -> PreparedRecord | None:
        """The next record of `key` to send, now that the one before it is done.

        Its ledger state predates the record just finished; the submitter consults what
        that one learnt (`known`) before it, and a duplicate of it is skipped here.
        """
        waiting = self._busy[key]
        while waiting:
            rec = waiting.popleft()
            skipped = None if self._stop.is_set() else self._skip(rec, self._recent.get(key))
            if skipped is None:
                return rec
            self._finish(rec.seq, skipped)
            self._slots.release()
        del self._busy[key]
        return None

    async def _submit(self, rec: PreparedRecord) -> OutcomeRecord | None:
        """Send `rec` to its end; its final outcome (None: left for `resume`)."""
        if self._stop.is_set():
            self._not_sent(rec.seq, _pending(rec))
            return None
        try:
            outcome = await self._submitter.submit(
                rec, sent_action=self._read_back_seqs.get(rec.seq)
            )
        except Interrupted:
            self._not_sent(rec.seq, _pending(rec))
            return None
        except RunAborted as exc:
            if self.abort is None:
                self.abort = exc
            self._stop.set()
            if isinstance(exc, StoppedByAnswer):
                # Not final either: `resume` reads the record back or sends it again.
                self._finish(rec.seq, exc.outcome, final=False)
            else:
                self._not_sent(rec.seq, _pending(rec))
            return None
        self._finish(rec.seq, outcome)
        return outcome


async def _forward(
    items: AsyncIterator[tuple[int, SourceItem]],
    arrived: asyncio.Queue[tuple[int, SourceItem] | None],
) -> None:
    """Every item into `arrived`, then None."""
    async for pair in items:
        await arrived.put(pair)
    await arrived.put(None)


def _pending(rec: PreparedRecord) -> OutcomeRecord:
    return OutcomeRecord(
        rec.kind, rec.nmi, rec.source, Outcome.FAILED, content_hash=rec.content_hash
    )


def _line_of(source: SourceRef) -> str:
    """Where a record is, for a reason: its line, and its item if it is one of an array
    (several may share a line)."""
    path = "standard input" if source.path == STDIN else to_text(source.path)
    at = "" if source.line is None else f"line {source.line}"
    if source.index is not None:
        at = f"item {source.index}" + (f" (at {at})" if at else "")
    return f"{at} of {path}" if at else path


def _superseded(rec: PreparedRecord, later: PreparedRecord) -> OutcomeRecord:
    return rec.skipped(
        f"superseded by {_line_of(later.source)}, a later line of the same NMI that takes its"
        " place, so it is not sent"
    )
