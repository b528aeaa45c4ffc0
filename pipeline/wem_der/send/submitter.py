"""One record, from pre-flighted payload to final outcome: action, retries, replays, reconciliation.

Every HTTP attempt takes the quota once (retries, token replays and read-backs included;
send/attempt.py, as the register's reads do), and every write is in the ledger before it
leaves. Expected answers become outcomes; only a misconfigured client (`Misconfigured`)
or refused credentials raise.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wem_der.errors import Misconfigured
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord, PreparedRecord
from wem_der.records.shapes import RecordKind
from wem_der.send.answers import Counters, KnownRefusal, quoted_error, transaction_id
from wem_der.send.attempt import Attempts
from wem_der.send.body import ApiAnswer, EncodedBody
from wem_der.send.client import ApiClient
from wem_der.send.recent import Recent
from wem_der.send.reconcile import is_conditional, register_holds
from wem_der.send.retry import (
    RETRYABLE_EXCEPTIONS,
    Answered,
    Budget,
    Meaning,
    TokenUnavailable,
    decide,
)
from wem_der.send.routes import Routes, request_body

# NMIs whose existence a Submitter remembers: enough for every record in a run's hands at
# once (workers x 4, see run/stages.py) many times over.
EXISTS_MEMORY = 16_384


class _Unknown:
    """A read-back that could not tell whether the record landed."""


UNKNOWN = _Unknown()


# Answers about the moment, not about entitlement: they do not break a run of 403s.
_WEATHER = frozenset(
    {Meaning.RETRY, Meaning.THROTTLED, Meaning.REFRESH_TOKEN, Meaning.REFRESH_FAILED}
)
_FORBIDDEN = frozenset({Meaning.FORBIDDEN, Meaning.FORBIDDEN_EVERYWHERE})


class StoppedByAnswer(Misconfigured):
    """A record's answer showed the client misconfigured: the run stops, and the record's
    outcome (sent, with that answer) goes with the reason."""

    def __init__(self, cause: Misconfigured, outcome: OutcomeRecord) -> None:
        super().__init__(str(cause))
        self.outcome = outcome


class Submitter:
    """Submits one record at a time per call; shared by all workers of a run."""

    def __init__(
        self,
        *,
        run_id: str,
        client: ApiClient,
        attempts: Attempts,
        ledger: Ledger,
        routes: Routes,
        requested: Action,
        already_exists: KnownRefusal,
        record_missing: KnownRefusal,
        stop_after_forbidden: int = 3,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_id = run_id
        # The client encodes the bodies; `attempts` sends them, as it sends the run's reads.
        self._client = client
        self._attempts = attempts
        self._ledger = ledger
        self._routes = routes
        self._requested = requested
        self._already_exists = already_exists
        self._record_missing = record_missing
        self._stop_after_forbidden = stop_after_forbidden
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._sleep = sleep
        self._clock = clock
        # What this run has learnt lately about which NMIs exist at the register; a record
        # of an NMI finished long ago is in the ledger, which every lookup reads.
        self._exists: Recent[tuple[RecordKind, str], bool] = Recent(EXISTS_MEMORY)
        self._forbidden_streak = 0

    @property
    def counters(self) -> Counters:
        """Every request this submitter made, by status, and its replays and read-backs."""
        return self._attempts.counters

    def known(self, rec: PreparedRecord) -> bool | None:
        """Whether this run last found `rec`'s NMI at the register (None: not lately)."""
        return self._exists.get((rec.kind, rec.nmi))

    def _first_action(self, rec: PreparedRecord) -> Action:
        if self._requested is not Action.UPSERT:
            return self._requested
        known = self.known(rec)
        return Action.UPDATE if (rec.exists if known is None else known) else Action.CREATE

    def _learn(self, rec: PreparedRecord, exists: bool) -> None:
        self._exists[(rec.kind, rec.nmi)] = exists
        self._ledger.set_exists(rec.kind.value, rec.nmi, exists)

    async def _read_back(self, rec: PreparedRecord) -> ApiAnswer | _Unknown | None:
        """The stored record if it holds what was sent; None if absent or different."""
        self.counters.reconciliations += 1
        try:
            url = self._routes.item(rec.kind, rec.nmi)
            answer, token = await self._attempts.send("GET", url, None)
        except RETRYABLE_EXCEPTIONS:
            return UNKNOWN
        if answer.status == 200:
            self._learn(rec, exists=True)
            return answer if register_holds(answer.data, rec.payload) else None
        if answer.status == 404:
            self._learn(rec, exists=False)
            return None
        if answer.status == 401:
            self._attempts.tokens.invalidate(token)
        elif answer.status == 429:
            self._attempts.throttled(answer)
        return UNKNOWN

    def _outcome(
        self,
        state: _Attempt,
        outcome: Outcome,
        *,
        answer: ApiAnswer | None = None,
        reason: str | None = None,
        action: Action | None = None,
    ) -> OutcomeRecord:
        """The record's outcome; `action` when the write that landed is not `state.action`."""
        rec = state.rec
        return OutcomeRecord(
            kind=rec.kind,
            nmi=rec.nmi,
            source=rec.source,
            outcome=outcome,
            action=action or state.action,
            http_status=answer.status if answer else None,
            transaction_id=transaction_id(answer),
            errors=list(answer.errors) if answer else [],
            exceptions=list(answer.exceptions) if answer else [],
            attempts=state.attempts,
            reason=reason,
            latency_ms=round((self._clock() - state.started) * 1000, 1),
            content_hash=rec.content_hash,
            run_id=self._run_id,
        )

    def _success(
        self,
        state: _Attempt,
        answer: ApiAnswer,
        *,
        action: Action | None = None,
        reason: str | None = None,
    ) -> OutcomeRecord:
        self._forbidden_streak = 0
        # Memory only: the ledger learns it from the outcome (`record_outcome`).
        self._exists[(state.rec.kind, state.rec.nmi)] = True
        conditional = bool(answer.exceptions) or is_conditional(answer.data)
        outcome = Outcome.CONDITIONAL if conditional else Outcome.ACCEPTED
        return self._outcome(state, outcome, answer=answer, reason=reason, action=action)

    async def submit(
        self,
        rec: PreparedRecord,
        *,
        sent_action: Action | None = None,
    ) -> OutcomeRecord:
        """Send one record until it has a final outcome, within its retry budget.

        `sent_action`: a write of this record (that action) was on the wire when an earlier
        process died; read the register before sending, and send only if it lacks this
        content. A read-back that finds it reports that action.
        """
        started = self._clock()
        state = _Attempt(
            rec=rec,
            # Pre-flight refused any record whose body, compressed as here, is over the
            # limit (preflight.body_issue), so that validate and submit agree on it.
            body=self._client.encode(request_body(rec.kind, rec.payload)),
            action=self._first_action(rec),
            budget=self._attempts.budget(),
            started=started,
            in_doubt=sent_action is not None,
            sent_action=sent_action,
        )
        while True:
            step = await (self._confirm(state) if state.in_doubt else self._write(state))
            if isinstance(step, OutcomeRecord):
                return step
            if step is None:
                continue
            delay = self._attempts.next_delay(state.budget, self._rng, step.retry_after)
            if delay is None:
                return self._outcome(
                    state,
                    Outcome.FAILED,
                    answer=state.last,
                    reason=f"retry budget spent; last: {state.reason}",
                )
            await self._sleep(delay)

    async def _confirm(self, state: _Attempt) -> OutcomeRecord | _Retry | None:
        """Read back a write that may have landed: its outcome if it did, None (write at
        once) if it did not, a retry if the register could not tell."""
        state.attempts += 1
        found = await self._read_back(state.rec)
        if isinstance(found, ApiAnswer):
            return self._success(
                state,
                found,
                action=state.sent_action or state.action,
                reason="the write landed without an answer; confirmed by reading it back",
            )
        if found is UNKNOWN:
            return _Retry(None)
        state.in_doubt = False
        if self.known(state.rec) and self._requested is Action.UPSERT:
            state.action = Action.UPDATE
        return None

    async def _write(self, state: _Attempt) -> OutcomeRecord | _Retry | None:
        """One write, in the ledger before it leaves: an outcome, a retry, or None (write
        again at once)."""
        rec = state.rec
        method, url = self._routes.write(rec.kind, state.action, rec.nmi)
        attempt_id: int | None = None

        async def leaving() -> None:
            nonlocal attempt_id
            attempt_id = await self._ledger.begin_attempt(
                run_id=self._run_id,
                seq=rec.seq,
                kind=rec.kind.value,
                nmi=rec.nmi,
                action=state.action.value,
                content_hash=rec.content_hash,
            )
            state.attempts += 1
            state.sent_action = None  # from now on, a write that lands is this one

        try:
            answer, token = await self._attempts.send(method, url, state.body, leaving=leaving)
        except RETRYABLE_EXCEPTIONS as exc:
            state.reason = f"no answer: {type(exc).__name__} {exc}".strip()
            if attempt_id is None:
                return _Retry(None)  # the attempt never began
            self._ledger.finish_attempt(attempt_id, http_status=None, transaction_id=None)
            # A lost update is safe to send again (PUT of the whole record); a lost create
            # may have been stored and must be read back first, unless it never left for
            # want of a token.
            state.in_doubt = state.action is Action.CREATE and not isinstance(exc, TokenUnavailable)
            return _Retry(None)
        assert attempt_id is not None  # an answered attempt began
        self._ledger.finish_attempt(
            attempt_id, http_status=answer.status, transaction_id=transaction_id(answer)
        )
        state.last = answer
        if answer.status != 401:
            # The register took the refreshed token. A later 401 (the token revoked again
            # while this record waited to retry) is news that earns its own refresh and
            # replay, not "401 again after a refresh".
            state.replayed = False
        return self._after(state, answer, token)

    def _decide(self, state: _Attempt, answer: ApiAnswer) -> Meaning:
        """What `answer` means (`decide`), and the run of 403s it extends or breaks."""
        meaning = decide(
            Answered(
                status=answer.status,
                action=state.action,
                upsert=self._requested is Action.UPSERT,
                json_object=answer.json_object,
                replayed=state.replayed,
                already_exists=self._already_exists(answer),
                record_missing=self._record_missing(answer),
                forbidden_streak=self._forbidden_streak,
                stop_after_forbidden=self._stop_after_forbidden,
            )
        )
        if meaning in _FORBIDDEN:
            self._forbidden_streak += 1
        elif meaning not in _WEATHER:
            self._forbidden_streak = 0
        return meaning

    def _after(
        self, state: _Attempt, answer: ApiAnswer, token: str
    ) -> OutcomeRecord | _Retry | None:
        """Act on what `answer` means: learn, refresh, pause, and say what comes next (as
        `_write`); an answer that shows the client misconfigured raises `StoppedByAnswer`."""
        rec = state.rec
        match meaning := self._decide(state, answer):
            case Meaning.ACCEPTED:
                return self._success(state, answer)
            case Meaning.RETRY:
                state.reason = f"HTTP {answer.status}"
                return _Retry(self._attempts.retry_after(answer))
            case Meaning.THROTTLED:
                state.reason = f"HTTP {answer.status}"
                return _Retry(self._attempts.throttled(answer))
            case Meaning.REFRESH_TOKEN:
                self.counters.token_replays += 1
                self._attempts.tokens.invalidate(token)
                state.replayed = True
                return None
            case Meaning.CREATE_INSTEAD:
                self._learn(rec, exists=False)
                state.action = Action.CREATE
                return None
            case Meaning.UPDATE_INSTEAD:
                self._learn(rec, exists=True)
                state.action = Action.UPDATE
                return None
            case Meaning.REFRESH_FAILED:
                reason = "401 again after a token refresh"
                return self._outcome(state, Outcome.FAILED, answer=answer, reason=reason)
            case Meaning.NO_RECORD:
                reason = "the register has no record for this NMI"
                return self._outcome(state, Outcome.REJECTED, answer=answer, reason=reason)
            case Meaning.ALREADY_EXISTS:
                self._learn(rec, exists=True)
                return self._outcome(state, Outcome.REJECTED, answer=answer)
            case Meaning.FORBIDDEN | Meaning.REJECTED:
                return self._outcome(state, Outcome.REJECTED, answer=answer)
            case _:  # WRONG_URL, NOT_THE_REGISTER, MISCONFIGURED, FORBIDDEN_EVERYWHERE
                cause = Misconfigured(self._stop_message(meaning, state, answer))
                # The record was sent and answered: its outcome says so, not "not sent".
                reason = f"its answer stopped the run: {cause}"
                outcome = self._outcome(state, Outcome.FAILED, answer=answer, reason=reason)
                raise StoppedByAnswer(cause, outcome)

    def _stop_message(self, meaning: Meaning, state: _Attempt, answer: ApiAnswer) -> str:
        """What an answer that stops the run shows wrong, and what to check."""
        status, action = answer.status, state.action.value
        where = self._routes.collection(state.rec.kind)
        if meaning is Meaning.WRONG_URL:
            return (
                f"404{quoted_error(answer)} on {action} at {where}: the base URL is wrong; check"
                " --base-url / --nmi-base-url (or the profile's record_missing_pattern, if the"
                " register words a missing NMI otherwise)"
            )
        if meaning is Meaning.NOT_THE_REGISTER:
            body = repr(answer.raw_excerpt[:80]) if answer.raw_excerpt else "no JSON object"
            return (
                f"HTTP {status} with {body} for a {action} at {where}: not the register's"
                " answer, so not counted as accepted; check --base-url / --nmi-base-url and"
                " any proxy"
            )
        if meaning is Meaning.FORBIDDEN_EVERYWHERE:
            return (
                f"403 Forbidden on {self._forbidden_streak} records in a row: the participant"
                " ID or certificate is not entitled to this API; stopping the run"
            )
        return (
            f"HTTP {status}{quoted_error(answer)} from the {state.rec.kind.value} API: the"
            " client is misconfigured (URL, method, Content-Length or Content-Type); stopping"
            " the run"
        )


@dataclass(slots=True)
class _Attempt:
    """One record on its way to an outcome: what changes from one attempt to the next."""

    rec: PreparedRecord
    body: EncodedBody
    action: Action  # the write to send next
    budget: Budget
    started: float  # by the Submitter's clock, for the outcome's latency
    # A write went out and no answer came back: it may have landed, so read it back first.
    in_doubt: bool
    # The write an earlier process had on the wire (see `submit`); None once one is sent.
    sent_action: Action | None
    attempts: int = 0  # writes and read-backs
    replayed: bool = False  # the next write replays with a token refreshed after a 401
    last: ApiAnswer | None = None  # the latest answer to a write
    reason: str | None = None  # why the latest attempt failed, for "retry budget spent"


@dataclass(frozen=True, slots=True)
class _Retry:
    """Wait (at least `retry_after` seconds, if the server named a time), then try again."""

    retry_after: float | None
