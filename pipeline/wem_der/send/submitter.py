"""One record, from pre-flighted payload to final outcome: action, retries, replays, reconciliation.

Every HTTP attempt takes the quota once (retries, token replays and read-backs included),
and every write is in the ledger before it leaves. Expected answers become outcomes;
only a misconfigured client (`Misconfigured`) or refused credentials raise.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from wem_der.errors import Misconfigured
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord, PreparedRecord
from wem_der.records.shapes import RecordKind
from wem_der.send.answers import Counters, KnownRefusal, first_error, transaction_id
from wem_der.send.auth import TokenProvider
from wem_der.send.body import ApiAnswer, EncodedBody
from wem_der.send.client import ApiClient
from wem_der.send.quota import QuotaLimiter
from wem_der.send.recent import Recent
from wem_der.send.reconcile import is_conditional, register_holds
from wem_der.send.retry import (
    RETRYABLE_EXCEPTIONS,
    Budget,
    RetryPolicy,
    Verdict,
    classify,
    parse_retry_after,
)
from wem_der.send.routes import Routes, request_body

# NMIs whose existence a Submitter remembers: enough for every record in a run's hands at
# once (workers x 4, see run/stages.py) many times over.
EXISTS_MEMORY = 16_384


class _Unknown:
    """A read-back that could not tell whether the record landed."""


UNKNOWN = _Unknown()


# Answers about the moment, not about entitlement: they do not break a run of 403s.
_WEATHER = frozenset({Verdict.RETRY, Verdict.REFRESH_TOKEN})


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
        tokens: TokenProvider,
        limiter: QuotaLimiter,
        ledger: Ledger,
        routes: Routes,
        policy: RetryPolicy,
        requested: Action,
        already_exists: KnownRefusal,
        record_missing: KnownRefusal,
        stop_after_forbidden: int = 3,
        counters: Counters | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_id = run_id
        self._client = client
        self._tokens = tokens
        self._limiter = limiter
        self._ledger = ledger
        self._routes = routes
        self._policy = policy
        self._requested = requested
        self._already_exists = already_exists
        self._record_missing = record_missing
        self._stop_after_forbidden = stop_after_forbidden
        self.counters = counters or Counters()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._sleep = sleep
        self._clock = clock
        # What this run has learnt lately about which NMIs exist at the register; a record
        # of an NMI finished long ago is in the ledger, which every lookup reads.
        self._exists: Recent[tuple[RecordKind, str], bool] = Recent(EXISTS_MEMORY)
        self._forbidden_streak = 0

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

    async def _request(
        self, method: str, url: str, body: EncodedBody | None
    ) -> tuple[ApiAnswer, str]:
        """One attempt: token, then quota, then the wire, so that the grant is the send time."""
        # A refresh due now happens before the grant, not between the grant and the send.
        await self._tokens.token()
        await self._limiter.acquire()
        # A quota wait or a Retry-After pause can outlast the token's refresh margin: ask
        # again, which costs nothing while it is fresh, rather than send it expired and
        # spend a request on the 401.
        token = await self._tokens.token()
        self.counters.requests += 1
        try:
            answer = await self._client.send(method, url, body, token=token)
        except RETRYABLE_EXCEPTIONS:
            self.counters.saw(None)
            raise
        self.counters.saw(answer.status)
        if answer.status == 429:
            self.counters.http_429 += 1
        return answer, token

    def _retry_after(self, answer: ApiAnswer) -> float | None:
        """The answer's Retry-After in seconds (number or HTTP date), capped by the policy."""
        return parse_retry_after(
            answer.retry_after, now=datetime.now(UTC), cap_s=self._policy.retry_after_cap_s
        )

    def _throttled(self, answer: ApiAnswer) -> float | None:
        """A 429 pauses every worker, not only this one, and lowers the rate."""
        retry_after = self._retry_after(answer)
        self._limiter.throttled()
        self._limiter.pause_for(
            retry_after if retry_after is not None else self._policy.base_delay_s
        )
        return retry_after

    async def _read_back(self, rec: PreparedRecord) -> ApiAnswer | _Unknown | None:
        """The stored record if it holds what was sent; None if absent or different."""
        self.counters.reconciliations += 1
        try:
            answer, token = await self._request("GET", self._routes.item(rec.kind, rec.nmi), None)
        except RETRYABLE_EXCEPTIONS:
            return UNKNOWN
        if answer.status == 200:
            self._learn(rec, exists=True)
            return answer if register_holds(answer.data, rec.payload) else None
        if answer.status == 404:
            self._learn(rec, exists=False)
            return None
        if answer.status == 401:
            self._tokens.invalidate(token)
        elif answer.status == 429:
            self._throttled(answer)
        return UNKNOWN

    def _outcome(
        self,
        rec: PreparedRecord,
        outcome: Outcome,
        *,
        action: Action | None,
        attempts: int,
        started: float,
        answer: ApiAnswer | None = None,
        reason: str | None = None,
    ) -> OutcomeRecord:
        return OutcomeRecord(
            kind=rec.kind,
            nmi=rec.nmi,
            source=rec.source,
            outcome=outcome,
            action=action,
            http_status=answer.status if answer else None,
            transaction_id=transaction_id(answer),
            errors=list(answer.errors) if answer else [],
            exceptions=list(answer.exceptions) if answer else [],
            attempts=attempts,
            reason=reason,
            latency_ms=round((self._clock() - started) * 1000, 1),
            content_hash=rec.content_hash,
            run_id=self._run_id,
        )

    def _success(
        self,
        rec: PreparedRecord,
        answer: ApiAnswer,
        action: Action,
        *,
        attempts: int,
        started: float,
        reason: str | None = None,
    ) -> OutcomeRecord:
        self._forbidden_streak = 0
        # Memory only: the ledger learns it from the outcome (`record_outcome`).
        self._exists[(rec.kind, rec.nmi)] = True
        conditional = bool(answer.exceptions) or is_conditional(answer.data)
        outcome = Outcome.CONDITIONAL if conditional else Outcome.ACCEPTED
        return self._outcome(
            rec,
            outcome,
            action=action,
            attempts=attempts,
            started=started,
            answer=answer,
            reason=reason,
        )

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
        # Pre-flight refused any record whose body, compressed as here, is over the limit
        # (preflight.body_issue), so that validate and submit agree on it.
        body = self._client.encode(request_body(rec.kind, rec.payload))
        action = self._first_action(rec)
        budget = Budget(self._policy, clock=self._clock)
        attempts = 0
        # A write went out and no answer came back: it may have landed.
        in_doubt = sent_action is not None
        replayed = False
        last: ApiAnswer | None = None
        reason: str | None = None
        while True:
            retry_after: float | None = None
            if in_doubt:
                attempts += 1
                found = await self._read_back(rec)
                if isinstance(found, ApiAnswer):
                    return self._success(
                        rec,
                        found,
                        sent_action or action,
                        attempts=attempts,
                        started=started,
                        reason="the write landed without an answer; confirmed by reading it back",
                    )
                if found is None:
                    in_doubt = False
                    if self.known(rec) and self._requested is Action.UPSERT:
                        action = Action.UPDATE
                    continue
            else:
                method, url = self._routes.write(rec.kind, action, rec.nmi)
                attempt_id = await self._ledger.begin_attempt(
                    run_id=self._run_id,
                    seq=rec.seq,
                    kind=rec.kind.value,
                    nmi=rec.nmi,
                    action=action.value,
                    content_hash=rec.content_hash,
                )
                attempts += 1
                sent_action = None  # from now on, a write that lands is this one
                try:
                    answer, token = await self._request(method, url, body)
                except RETRYABLE_EXCEPTIONS as exc:
                    self._ledger.finish_attempt(attempt_id, http_status=None, transaction_id=None)
                    # A lost update is safe to send again (PUT of the whole record); a lost
                    # create may have been stored and must be read back first.
                    in_doubt = action is Action.CREATE
                    reason = f"no answer: {type(exc).__name__} {exc}".strip()
                else:
                    self._ledger.finish_attempt(
                        attempt_id,
                        http_status=answer.status,
                        transaction_id=transaction_id(answer),
                    )
                    last = answer
                    if answer.status != 401:
                        # The register took the refreshed token. A later 401 (the token
                        # revoked again while this record waited to retry) is news that
                        # earns its own refresh and replay, not "401 again after a refresh".
                        replayed = False
                    step = self._step(
                        rec, answer, action, replayed, token, attempts=attempts, started=started
                    )
                    if step is None:
                        return self._success(
                            rec, answer, action, attempts=attempts, started=started
                        )
                    if isinstance(step, _Final):
                        return self._outcome(
                            rec,
                            step.outcome,
                            action=action,
                            attempts=attempts,
                            started=started,
                            answer=answer,
                            reason=step.reason,
                        )
                    if isinstance(step, _Switch):
                        action, replayed = step.action, step.replayed
                        continue
                    retry_after = step.retry_after
                    reason = step.reason
            delay = budget.next_delay(self._rng, retry_after)
            if delay is None:
                return self._outcome(
                    rec,
                    Outcome.FAILED,
                    action=action,
                    attempts=attempts,
                    started=started,
                    answer=last,
                    reason=f"retry budget spent; last: {reason}",
                )
            await self._sleep(delay)

    def _step(
        self,
        rec: PreparedRecord,
        answer: ApiAnswer,
        action: Action,
        replayed: bool,
        token: str,
        *,
        attempts: int,
        started: float,
    ) -> _Final | _Switch | _Retry | None:
        """`_after`, with a misconfiguration it finds carrying the record's outcome: sent,
        and answered, not "not sent"."""
        try:
            return self._after(rec, answer, action, replayed, token)
        except Misconfigured as exc:
            outcome = self._outcome(
                rec,
                Outcome.FAILED,
                action=action,
                attempts=attempts,
                started=started,
                answer=answer,
                reason=f"its answer stopped the run: {exc}",
            )
            raise StoppedByAnswer(exc, outcome) from None

    def _after(
        self, rec: PreparedRecord, answer: ApiAnswer, action: Action, replayed: bool, token: str
    ) -> _Final | _Switch | _Retry | None:
        """What one answer means for the record; None is success."""
        status = answer.status
        verdict = classify(status)
        if status != 403 and verdict not in _WEATHER:
            self._forbidden_streak = 0
        if status == 404:
            if action is Action.CREATE or not self._record_missing(answer):
                # A create names no record that could be missing, and an update's 404 that
                # is not the register's "ID not found" came from a path nobody serves.
                where = self._routes.collection(rec.kind)
                raise Misconfigured(
                    f"404{_quoted(answer)} on {action.value} at {where}: the base URL is"
                    " wrong; check --base-url / --nmi-base-url (or the profile's"
                    " record_missing_pattern, if the register words a missing NMI otherwise)"
                )
            if self._requested is Action.UPSERT:
                self._learn(rec, exists=False)
                return _Switch(Action.CREATE, replayed)
            return _Final(Outcome.REJECTED, "the register has no record for this NMI")
        if verdict is Verdict.DONE:
            if not answer.json_object:
                # The register answers every call with a JSON object [spec]. A 2xx of HTML,
                # text or nothing came from something else (a wrong host, a proxy's page),
                # and counting it accepted would make later runs skip a record it never saw.
                body = repr(answer.raw_excerpt[:80]) if answer.raw_excerpt else "no JSON object"
                raise Misconfigured(
                    f"HTTP {status} with {body} for a {action.value} at"
                    f" {self._routes.collection(rec.kind)}: not the register's answer, so not"
                    " counted as accepted; check --base-url / --nmi-base-url and any proxy"
                )
            return None
        if verdict is Verdict.REFRESH_TOKEN:
            if replayed:
                return _Final(Outcome.FAILED, "401 again after a token refresh")
            self.counters.token_replays += 1
            self._tokens.invalidate(token)
            return _Switch(action, replayed=True)
        if verdict is Verdict.RETRY:
            # A 503 may carry a Retry-After too (AEMO's generic guidance throttles with
            # 503 [guess]); only a 429 says the quota itself was overrun.
            retry_after = self._throttled(answer) if status == 429 else self._retry_after(answer)
            return _Retry(retry_after, f"HTTP {status}")
        if verdict is Verdict.STOP_RUN:
            raise Misconfigured(
                f"HTTP {status}{_quoted(answer)} from the {rec.kind.value} API: the client"
                " is misconfigured (URL, method, Content-Length or Content-Type); stopping the run"
            )
        if action is Action.CREATE and self._already_exists(answer):
            self._learn(rec, exists=True)
            if self._requested is Action.UPSERT:
                return _Switch(Action.UPDATE, replayed)
        if status == 403:
            self._forbidden_streak += 1
            if self._forbidden_streak >= self._stop_after_forbidden:
                raise Misconfigured(
                    f"403 Forbidden on {self._forbidden_streak} records in a row: the participant"
                    " ID or certificate is not entitled to this API; stopping the run"
                )
        return _Final(Outcome.REJECTED, None)


def _quoted(answer: ApiAnswer) -> str:
    """` (title: detail)` of the answer's first error, for messages; "" if it has none."""
    said = first_error(answer)
    return f" ({said})" if said else ""


@dataclass(frozen=True, slots=True)
class _Final:
    outcome: Outcome
    reason: str | None


@dataclass(frozen=True, slots=True)
class _Switch:
    action: Action
    replayed: bool


@dataclass(frozen=True, slots=True)
class _Retry:
    retry_after: float | None
    reason: str
