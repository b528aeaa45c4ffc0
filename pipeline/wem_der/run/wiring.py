"""The only module that wires: settings -> endpoints, session, token, quota, ledger, sink, engine.

A run is described by a `RunPlan` (which inputs, which kind, which records of which
earlier run), stored in `run.json` and in the ledger, so `resume` can rebuild it exactly.
`execute` runs it in four parts: `_open` (the quota, the outcome directory and ledger,
the endpoints and session), `_run_stages`, `_summary`, and the close (summary.json and
the ledger's run row, then everything opened, in reverse), after which the run's
metrics (`--metrics-file`, `--metrics-push`) are published from the summary, as they were
every few seconds while `_run_stages` went. A run that plans from the register reads it
through a `RegisterReader` on the run's own token, quota, retry policy and request
counters; `opened_reader` opens one of those alone, for `verify`, `export` and `followup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from wem_der.config import Settings, register_scope
from wem_der.files.limits import fit_concurrency
from wem_der.ledger.outcome_files import OutcomeSink
from wem_der.ledger.store import Ledger
from wem_der.records.enumerations import load_enumerations
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord
from wem_der.records.preflight import Preflight
from wem_der.records.shapes import RecordKind
from wem_der.register.search import RegisterReader
from wem_der.report.metrics import RunMetrics
from wem_der.run.endpoints import Endpoints, check_endpoints, endpoints, warn_if_insecure
from wem_der.run.lock import run_lock
from wem_der.run.plan import RunPlan, plan_items, unchecked_notes
from wem_der.run.results import RunResult, RunStatus, Summary
from wem_der.run.seqset import SeqSet
from wem_der.run.stages import Engine, Lineage, interruptible
from wem_der.run.start import LEDGER_FILE, begin, refuse_own_files
from wem_der.send.answers import Counters, KnownRefusal, status_label
from wem_der.send.attempt import Attempts
from wem_der.send.auth import TokenProvider
from wem_der.send.body import Compression
from wem_der.send.breaker import Breaker, parse_duration
from wem_der.send.client import SPARE_CONNECTIONS, ApiClient, TlsSettings, make_session
from wem_der.send.diagnose import Diagnosis
from wem_der.send.quota import QuotaLimiter, parse_burst, parse_rate, spread_s
from wem_der.send.quota_store import open_log
from wem_der.send.retry import RetryPolicy
from wem_der.send.submitter import Submitter

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Hooks:
    """How a run talks to the person watching it (the CLI's progress bar)."""

    on_start: Callable[[str, Path], None] = lambda run_id, out_dir: None
    on_outcome: Callable[[OutcomeRecord], None] = lambda outcome: None
    on_diff: Callable[[str, list[str]], None] = lambda nmi, lines: None
    on_note: Callable[[str], None] = lambda text: None
    # Given, once the run is open, what to show beside the progress bar while the register
    # is down ("register unavailable since 02:13; next probe in 40 s"); None while it is up.
    on_status: Callable[[Callable[[], str | None]], None] = lambda status: None
    # What stderr could not write (the log's loss), if anything: said in the summary.
    lost_output: Callable[[], str | None] = lambda: None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def default_concurrency(count: int, period_s: float) -> int:
    """Workers enough for the quota at up to 1 s of latency.

    Idle workers only wait on the quota, so this is a ceiling on requests in flight, not a
    load: the quota paces them, and Little's law (in flight = rate x latency) sets how many
    are busy at the latency the register actually shows.
    """
    return max(4, min(256, math.ceil(count / period_s)))


def preflight_for(settings: Settings, kind: RecordKind) -> Preflight:
    """The validation a run (or `validate`, or a dry run) applies to records of `kind`."""
    enumerations = load_enumerations(settings.enumerations_file)
    return Preflight(
        kind, settings.allow_unknown_fields, enumerations, Compression(settings.compression)
    )


def _client(
    settings: Settings, ep: Endpoints, *, session: aiohttp.ClientSession, clock: Clock, sleep: Sleep
) -> tuple[ApiClient, TokenProvider]:
    """The token and the client that every request of a run, a write or a read, goes by."""
    tokens = TokenProvider(
        session=session,
        token_url=ep.token_url,
        client_id=ep.client_id,
        client_secret=ep.client_secret,
        refresh_margin_s=settings.token_refresh_margin_s,
        timeout_s=settings.timeout_s,
        clock=clock,
        sleep=sleep,
    )
    client = ApiClient(
        session=session,
        tokens=tokens,
        participant_id=ep.participant_id,
        market=settings.market,
        compression=Compression(settings.compression),
        timeout_s=settings.timeout_s,
    )
    return client, tokens


def _policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        max_elapsed_s=settings.max_elapsed_s,
        base_delay_s=settings.base_delay_s,
        max_delay_s=settings.max_delay_s,
    )


def _breaker(settings: Settings, url: str, hooks: Hooks, *, clock: Clock, sleep: Sleep) -> Breaker:
    """The run's circuit breaker, shared by its writes and reads of the register at `url`,
    its waits interruptible by a stop; shown beside the progress bar while it is open."""
    breaker = Breaker(
        opens_after=settings.outage_after,
        probe_cap_s=settings.probe_max_delay_s,
        max_outage_s=parse_duration(settings.max_outage),
        diagnose=Diagnosis(url, client_cert=settings.client_cert is not None),
        clock=clock,
        sleep=interruptible(hooks.stop, sleep),
    )
    hooks.on_status(breaker.status)
    return breaker


def _attempts(
    settings: Settings,
    *,
    client: ApiClient,
    tokens: TokenProvider,
    limiter: QuotaLimiter,
    counters: Counters,
    breaker: Breaker,
    clock: Clock,
) -> Attempts:
    """How every request of a run is sent, a write or a read: one token, quota, breaker,
    retry policy and set of counters."""
    return Attempts(
        client=client,
        tokens=tokens,
        limiter=limiter,
        policy=_policy(settings),
        counters=counters,
        breaker=breaker,
        clock=clock,
    )


def _submitter(
    settings: Settings,
    plan: RunPlan,
    ep: Endpoints,
    *,
    client: ApiClient,
    attempts: Attempts,
    ledger: Ledger,
    stop: asyncio.Event,
    clock: Clock,
    sleep: Sleep,
) -> Submitter:
    return Submitter(
        run_id=plan.run_id,
        client=client,
        attempts=attempts,
        ledger=ledger,
        routes=ep.routes,
        requested=Action(settings.action),
        already_exists=KnownRefusal.already_exists(
            settings.already_exists_codes, settings.already_exists_pattern
        ),
        record_missing=KnownRefusal.record_missing(settings.record_missing_pattern),
        stop_after_forbidden=settings.stop_after_forbidden,
        sleep=interruptible(stop, sleep),
        clock=clock,
    )


def _reader(
    settings: Settings, ep: Endpoints, *, attempts: Attempts, stop: asyncio.Event, sleep: Sleep
) -> RegisterReader:
    """The register's bulk reader, on the run's `attempts`: a read is a request like any
    other."""
    return RegisterReader(
        attempts=attempts,
        routes=ep.routes,
        record_missing=KnownRefusal.record_missing(settings.record_missing_pattern),
        batch_size=settings.search_batch_size,
        page_size=settings.search_page_size,
        sleep=interruptible(stop, sleep),
    )


def plans_from_register(settings: Settings, kind: RecordKind) -> bool:
    """Whether a run of `kind` reads the register to plan (`Settings.plan`)."""
    return kind is RecordKind.INSTALLATION and settings.plan in (None, "register")


@contextlib.asynccontextmanager
async def opened_reader(
    settings: Settings,
    *,
    hooks: Hooks,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> AsyncIterator[RegisterReader]:
    """A reader of the register, for `verify`, `export` and `followup`: a run's quota, endpoints,
    session and token, with no ledger and no outcome directory."""
    check_endpoints(settings, RecordKind.INSTALLATION)
    async with contextlib.AsyncExitStack() as stack:
        concurrency, limiter = await _pace(stack, settings, hooks, clock=clock, sleep=sleep)
        ep = await stack.enter_async_context(endpoints(settings))
        warn_if_insecure(settings, ep)
        session = await stack.enter_async_context(
            make_session(tls=_tls(settings), concurrency=concurrency, timeout_s=settings.timeout_s)
        )
        client, tokens = _client(settings, ep, session=session, clock=clock, sleep=sleep)
        url = ep.routes.collection(RecordKind.INSTALLATION)
        attempts = _attempts(
            settings,
            client=client,
            tokens=tokens,
            limiter=limiter,
            counters=Counters(),
            breaker=_breaker(settings, url, hooks, clock=clock, sleep=sleep),
            clock=clock,
        )
        yield _reader(settings, ep, attempts=attempts, stop=hooks.stop, sleep=sleep)


@dataclass
class _Open:
    """What a run holds open, from `_open` until its summary is written."""

    settings: Settings
    plan: RunPlan
    hooks: Hooks
    concurrency: int
    limiter: QuotaLimiter
    ledger: Ledger
    sink: OutcomeSink
    endpoints: Endpoints
    tokens: TokenProvider
    submitter: Submitter
    breaker: Breaker
    # What plans from the register (None: the ledger alone plans, see `Settings.plan`).
    reader: RegisterReader | None
    metrics: RunMetrics
    # Records already final, and records whose write was on the wire when a run died.
    done: SeqSet
    read_back: dict[int, Action]
    # The outages of the run's earlier processes, as their summary listed them.
    earlier_outages: list[dict[str, Any]]


async def execute(
    settings: Settings,
    plan: RunPlan,
    *,
    hooks: Hooks,
    resume: bool = False,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> RunResult:
    """Run `plan` to the end (or until stopped) and write its summary.

    `clock` and `sleep` drive the quota, the retry waits and the token's expiry; tests
    inject them so that a Retry-After or a quota window passes without the wall clock.
    """
    check_endpoints(settings, plan.kind)
    refuse_own_files(settings, plan)
    started_at, started = datetime.now(UTC), time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        run = await _open(stack, settings, plan, hooks, resume=resume, clock=clock, sleep=sleep)
        engine = await _run_stages(run, sleep=sleep)
        summary = await _summary(run, engine, started_at=started_at, started=started)
        run.sink.write_summary(summary.as_json())
        await run.ledger.finish_run(plan.run_id, status=summary.status, summary=summary.as_json())
    # The last metrics are the summary's own, published once the run has let go of all it
    # held; a file or a push that fails now is the run's error (exit 2), not a warning.
    run.metrics.finish(summary.as_json())
    await run.metrics.publish(settings.metrics_file, settings.metrics_push, settings.metrics_job)
    return RunResult(plan.run_id, Path(plan.out_dir), summary, aborted=engine.abort)


async def _open(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    plan: RunPlan,
    hooks: Hooks,
    *,
    resume: bool,
    clock: Clock,
    sleep: Sleep,
) -> _Open:
    """Everything a run holds, opened in order onto `stack`, which closes it in reverse."""
    out_dir = Path(plan.out_dir)
    # The lock first (it creates the outcome directory, owner only): a run started on
    # the directory of a live run is refused before it touches anything there.
    stack.enter_context(run_lock(out_dir))
    ledger = await stack.enter_async_context(Ledger(settings.state_dir / LEDGER_FILE))
    # The quota before the run begins in the ledger: a quota store that cannot be reached
    # stops it before it is recorded or sends anything.
    concurrency, limiter = await _pace(stack, settings, hooks, clock=clock, sleep=sleep)
    # The outages that earlier processes of a resumed run waited out, from the summary the
    # last of them wrote (a process killed outright wrote none), before `begin` clears it.
    earlier = await ledger.get_run(plan.run_id) if resume else None
    outages = list((earlier.summary or {}).get("outages") or []) if earlier else []
    done, read_back = await begin(ledger, settings, plan, resume=resume, on_note=hooks.on_note)
    counters = await _earlier_requests(ledger, plan.run_id) if resume else Counters()
    # A resumed run's requests count from its first process on, as its summary's do.
    metrics = RunMetrics(clock=clock)
    metrics.requests.update(counters.by_status)
    counters.on_answer = metrics.on_answer
    hooks.on_start(plan.run_id, out_dir)
    for note in unchecked_notes(plan, again=resume or plan.parent_run_id is not None):
        hooks.on_note(note)
    ep = await stack.enter_async_context(endpoints(settings))
    warn_if_insecure(settings, ep)
    session = await stack.enter_async_context(
        make_session(tls=_tls(settings), concurrency=concurrency, timeout_s=settings.timeout_s)
    )
    client, tokens = _client(settings, ep, session=session, clock=clock, sleep=sleep)
    url = ep.routes.collection(plan.kind)
    breaker = _breaker(settings, url, hooks, clock=clock, sleep=sleep)
    attempts = _attempts(
        settings,
        client=client,
        tokens=tokens,
        limiter=limiter,
        counters=counters,
        breaker=breaker,
        clock=clock,
    )
    submitter = _submitter(
        settings,
        plan,
        ep,
        client=client,
        attempts=attempts,
        ledger=ledger,
        stop=hooks.stop,
        clock=clock,
        sleep=sleep,
    )
    reader = None
    if plans_from_register(settings, plan.kind):
        reader = _reader(settings, ep, attempts=attempts, stop=hooks.stop, sleep=sleep)
    elif settings.plan == "register":
        hooks.on_note(
            "the NMI API has no search, so --plan register plans NMI records from the ledger"
        )
    sink = stack.enter_context(OutcomeSink(out_dir, append=resume))
    return _Open(
        settings=settings,
        plan=plan,
        hooks=hooks,
        concurrency=concurrency,
        limiter=limiter,
        ledger=ledger,
        sink=sink,
        endpoints=ep,
        tokens=tokens,
        submitter=submitter,
        breaker=breaker,
        reader=reader,
        metrics=metrics,
        done=done,
        read_back=read_back,
        earlier_outages=outages,
    )


async def _earlier_requests(ledger: Ledger, run_id: str) -> Counters:
    """What the processes that worked on a resumed run before this one sent, as the ledger
    has it, for a summary of the whole run: their finished write attempts by answer (see
    `Ledger.attempt_statuses` for what that leaves out)."""
    counters = Counters()
    for status, attempts in (await ledger.attempt_statuses(run_id)).items():
        counters.requests += attempts
        counters.http_429 += attempts if status == 429 else 0
        counters.by_status[status_label(status)] += attempts
    return counters


async def _pace(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    hooks: Hooks,
    *,
    clock: Clock,
    sleep: Sleep,
) -> tuple[int, QuotaLimiter]:
    """How many workers a run has, and the quota that paces their requests."""
    count, period_s = parse_rate(settings.rate_limit)
    concurrency = fit_concurrency(
        settings.concurrency or default_concurrency(count, period_s),
        spare=SPARE_CONNECTIONS,
        # The embedded simulator accepts each connection in this process: two descriptors.
        per_connection=2 if settings.simulated else 1,
        on_note=hooks.on_note,
    )
    # The quota's wait is interruptible like a retry's: a stop (Ctrl-C, an abort) must not
    # wait out a long Retry-After pause, nor send a request granted after it.
    quota_sleep = interruptible(hooks.stop, sleep)
    # The quota is the participant's at this register, shared with every other job of it
    # (resumed runs, concurrent ones, other hosts through Redis).
    log = await stack.enter_async_context(
        open_log(
            settings.quota_store,
            state_dir=settings.state_dir,
            key=f"{settings.participant_id or ''}@{register_scope(settings)}",
            clock=clock,
            sleep=quota_sleep,
            wait_s=settings.quota_store_wait_s,
        )
    )
    limiter = QuotaLimiter(
        count=count,
        period_s=period_s,
        margin_s=settings.quota_margin_s,
        burst=parse_burst(settings.burst, count, period_s),
        max_share=settings.max_share,
        gap_s=spread_s(count, period_s),
        log=log,
        clock=clock,
        sleep=quota_sleep,
    )
    return concurrency, limiter


def _tls(settings: Settings) -> TlsSettings:
    return TlsSettings(
        client_cert=settings.client_cert,
        client_key=settings.client_key,
        ca_file=settings.ca_file,
        verify=not settings.insecure,
    )


async def _run_stages(run: _Open, *, sleep: Sleep) -> Engine:
    """The run's records through pre-flight and the workers, to their outcomes; the
    metrics published meanwhile, if asked for."""
    plan, hooks, metrics, settings = run.plan, run.hooks, run.metrics, run.settings
    engine = Engine(
        run_id=plan.run_id,
        preflight=preflight_for(run.settings, plan.kind),
        submitter=run.submitter,
        ledger=run.ledger,
        sink=run.sink,
        concurrency=run.concurrency,
        stop=hooks.stop,
        on_outcome=hooks.on_outcome,
        on_settled=lambda outcome, final: metrics.on_outcome(outcome, final=final),
        # With no plan, every record is sent, as with --force.
        force=plan.force or settings.plan == "none",
        reader=run.reader,
        carry_register_ids=settings.carry_register_ids,
        skip_seqs=run.done,
        read_back_seqs=run.read_back,
        lineage=Lineage(plan.parent_run_id) if plan.parent_run_id else None,
    )
    async with asyncio.TaskGroup() as group:
        publisher = None
        if settings.metrics_file is not None or settings.metrics_push is not None:
            publisher = group.create_task(
                metrics.publish_every(
                    settings.metrics_file,
                    settings.metrics_push,
                    settings.metrics_job,
                    refresh=lambda current: _refresh(current, run),
                    sleep=sleep,
                )
            )
        await engine.run(
            plan_items(
                plan, run.ledger, on_diff=hooks.on_diff, on_note=hooks.on_note, stop=hooks.stop
            )
        )
        if publisher is not None:
            publisher.cancel()
    await run.ledger.flush()
    return engine


def _refresh(metrics: RunMetrics, run: _Open) -> None:
    """The gauges read from the run just before the metrics are published."""
    counters = run.submitter.counters
    # A request is counted when sent and again by its answer: the difference is on the wire.
    metrics.set_in_flight(counters.requests - sum(counters.by_status.values()))
    metrics.set_fullest_window(run.limiter.max_in_window)
    metrics.set_outage_s(run.breaker.down_s())


async def _summary(run: _Open, engine: Engine, *, started_at: datetime, started: float) -> Summary:
    """The run's figures, its outcomes counted by the ledger."""
    counts = await run.ledger.outcome_counts(run.plan.run_id)
    status: RunStatus = "finished"
    if engine.abort is not None:
        status = "aborted"
    elif run.hooks.stop.is_set():
        status = "interrupted"
    counters = run.submitter.counters
    simulator = run.endpoints.simulator
    return Summary(
        run_id=run.plan.run_id,
        status=status,
        kind=run.plan.kind.value,
        records=sum(counts.values()) + engine.not_sent,
        accepted=counts.get(Outcome.ACCEPTED, 0),
        conditional=counts.get(Outcome.CONDITIONAL, 0),
        rejected=counts.get(Outcome.REJECTED, 0),
        invalid=counts.get(Outcome.INVALID, 0),
        failed=counts.get(Outcome.FAILED, 0),
        skipped=counts.get(Outcome.SKIPPED, 0),
        not_sent=engine.not_sent,
        requests=counters.requests,
        http_429=counters.http_429,
        requests_by_status=dict(counters.by_status),
        token_replays=counters.token_replays,
        token_refreshes=run.tokens.refreshes,
        reconciliations=counters.reconciliations,
        rate_limit=run.settings.rate_limit,
        concurrency=run.concurrency,
        max_requests_in_window=run.limiter.max_in_window,
        started_at=started_at.isoformat(),
        elapsed_s=round(time.monotonic() - started, 3),
        abort_reason=None if engine.abort is None else str(engine.abort),
        stderr_lost=run.hooks.lost_output(),
        register=None if simulator is None else simulator.stats(),
        outages=[*run.earlier_outages, *run.breaker.listed()],
    )
