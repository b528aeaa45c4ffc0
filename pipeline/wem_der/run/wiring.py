"""The only module that wires: settings -> endpoints, session, token, quota, ledger, sink, engine.

A run is described by a `RunPlan` (which inputs, which kind, which records of which
earlier run), stored in `run.json` and in the ledger, so `resume` can rebuild it exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from wem_der.config import Settings
from wem_der.errors import ConfigError, InputError, RunAborted
from wem_der.files.limits import fit_concurrency
from wem_der.files.pathtext import to_text
from wem_der.files.private import write_json_atomic
from wem_der.ledger.outcome_files import (
    PROBLEMS_CSV,
    SUMMARY_JSON,
    OutcomeSink,
    outcome_file,
    rewriting,
)
from wem_der.ledger.store import Ledger
from wem_der.read.sources import STDIN
from wem_der.records.enumerations import load_enumerations
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord
from wem_der.records.preflight import Preflight
from wem_der.records.shapes import RecordKind
from wem_der.run.endpoints import (
    SIMULATOR_FILE,
    Endpoints,
    check_endpoints,
    endpoints,
    warn_if_insecure,
)
from wem_der.run.lock import LOCK_FILE, run_lock
from wem_der.run.plan import RUN_JSON, RunPlan, plan_items, read_run_json, unchecked_notes
from wem_der.run.seqset import SeqSet
from wem_der.run.stages import Engine, Lineage, interruptible
from wem_der.send.answers import KnownRefusal
from wem_der.send.auth import TokenProvider
from wem_der.send.body import Compression
from wem_der.send.client import SPARE_CONNECTIONS, ApiClient, TlsSettings, make_session
from wem_der.send.quota import QuotaLimiter, parse_rate
from wem_der.send.retry import RetryPolicy
from wem_der.send.submitter import Submitter

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

LEDGER_FILE = "ledger.sqlite3"
# Answers that say a write was refused before it was applied: a record whose last write
# got one of these needs no read-back on resume (a 500, 502 or 504 may hide a write that
# was applied, and no answer at all certainly may).
REFUSED_UNAPPLIED = frozenset({400, 401, 403, 404, 405, 411, 413, 415, 422, 429, 503})


@dataclass
class RunResult:
    """What the CLI reports and turns into an exit code."""

    run_id: str
    out_dir: Path
    summary: dict[str, Any]
    aborted: RunAborted | None = None
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.aborted is not None or self.interrupted:
            return 3
        bad = sum(
            self.summary.get(o.value, 0)
            for o in (Outcome.REJECTED, Outcome.INVALID, Outcome.FAILED)
        )
        return 1 if bad else 0


@dataclass
class Hooks:
    """How a run talks to the person watching it (the CLI's progress bar)."""

    on_start: Callable[[str, Path], None] = lambda run_id, out_dir: None
    on_outcome: Callable[[OutcomeRecord], None] = lambda outcome: None
    on_diff: Callable[[str, list[str]], None] = lambda nmi, lines: None
    on_note: Callable[[str], None] = lambda text: None
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


async def _take_directory(
    ledger: Ledger, plan: RunPlan, out_dir: Path, *, resume: bool, on_note: Callable[[str], None]
) -> None:
    """Make `out_dir` this run's; the caller holds its lock, so no run is live there.

    An outcome directory holds the files of one run, the one its `run.json` names. A new
    run may replace a finished run's files (the ledger keeps its outcomes), but not those
    of a run that did not finish: `resume` finishes that run there, and `resume DIR` would
    otherwise pick up the newcomer. A resume never writes over the files of another run.
    """
    held = read_run_json(out_dir)
    if held is None or held["run_id"] == plan.run_id:
        return
    other = held["run_id"]
    if resume:
        raise ConfigError(
            f"the outcome directory {out_dir} now holds run {other}, so run {plan.run_id}"
            f" cannot go on there; its outcomes are in the ledger: wem-der report {plan.run_id}"
        )
    row = await ledger.get_run(other)
    if row is None:
        raise ConfigError(
            f"the outcome directory {out_dir} holds run {other}, which this ledger does not"
            " know: a run of another register or --state-dir (choose another --out), or one"
            f" killed before it began (`wem-der resume {out_dir}` starts it)"
        )
    if row.status != "finished":
        # No live run holds the lock, so one the ledger still calls running ended early:
        # killed, a second Ctrl-C, or an error such as a full disk.
        state = "killed, stopped at once or by an error" if row.status == "running" else row.status
        raise ConfigError(
            f"the outcome directory {out_dir} holds run {other}, which did not finish ({state}):"
            f" `wem-der resume {other}` finishes it there; to start a new run, choose another"
            " --out"
        )
    on_note(
        f"{out_dir} held run {other} (finished): its outcome files are replaced, its outcomes"
        f" stay in the ledger (wem-der report {other})"
    )


def _refuse_own_files(settings: Settings, plan: RunPlan) -> None:
    """Refuse a run that would read a file it writes itself.

    A new run empties the outcome files of the finished run it replaces before it reads
    its input, a resume rewrites them, and every run writes the ledger: an input that is
    one of them (by any name: a symbolic link, another relative path, a hard link,
    standard input redirected from it) would be read empty or changing, and its records
    lost with the file. Files are compared by device and inode, which every name of a file
    shares, and by resolved path.
    """
    out_dir = Path(plan.out_dir)
    outcome_files = [
        *(out_dir / outcome_file(outcome) for outcome in Outcome),
        *(out_dir / name for name in (PROBLEMS_CSV, SUMMARY_JSON, RUN_JSON, LOCK_FILE)),
    ]
    written = dict.fromkeys(outcome_files, ("outcome directory", "--out"))
    written.update(
        (settings.state_dir / f"{database}{suffix}", ("state directory", "--state-dir"))
        for database in (LEDGER_FILE, SIMULATOR_FILE)
        for suffix in ("", "-wal", "-shm", "-journal")
    )
    by_inode: dict[tuple[int, int], Path] = {}
    for path in written:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            by_inode[(info.st_dev, info.st_ino)] = path
    by_name = {os.path.realpath(path): path for path in written}
    for name in (*plan.inputs, *([plan.corrected] if plan.corrected else [])):
        hit = None if name == STDIN else by_name.get(os.path.realpath(name))
        # Standard input closed, or an input gone, is not a file this run writes.
        with contextlib.suppress(OSError):
            info = os.fstat(0) if name == STDIN else os.stat(name)
            hit = by_inode.get((info.st_dev, info.st_ino), hit)
        if hit is None:
            continue
        given = "standard input" if name == STDIN else f"input {to_text(name)}"
        if name == STDIN or os.path.realpath(name) != os.path.realpath(hit):
            given += f" is {to_text(str(hit))}, which"
        place, flag = written[hit]
        raise InputError(
            f"{given} is a file this run writes (in its {place}), so it would be emptied or"
            f" changed before it is read; copy it elsewhere and give the copy, or choose"
            f" another {flag}"
        )


def _write_run_json(settings: Settings, plan: RunPlan, out_dir: Path) -> None:
    """Write the `run.json` of a new run (in a directory `_take_directory` has made its)."""
    try:
        write_json_atomic(out_dir / RUN_JSON, plan.as_json() | {"settings": settings.secret_free()})
    except OSError as exc:
        raise ConfigError(
            f"cannot write the outcome directory {out_dir}: {exc.strerror}; check --out"
        ) from exc


async def _open_run(
    ledger: Ledger, settings: Settings, plan: RunPlan, out_dir: Path, resume: bool
) -> tuple[SeqSet, dict[int, Action]]:
    """(records already final, records whose write was on the wire when a run died, with
    the action of that write)."""
    # A run_id the ledger knows is that run resuming: it is marked running again. One it
    # does not know was killed before it recorded itself, so before it sent anything.
    await ledger.start_run(
        run_id=plan.run_id,
        kind=plan.kind.value,
        out_dir=to_text(str(out_dir)),
        inputs=[to_text(path) for path in plan.inputs],
        settings={"plan": plan.as_json(), "settings": settings.secret_free()},
        parent_run_id=plan.parent_run_id,
    )
    if not resume:
        return SeqSet(), {}
    read_back = {
        seq: Action(f.action)
        for seq, f in (await ledger.in_flight(plan.run_id)).items()
        if f.http_status not in REFUSED_UNAPPLIED
    }
    # The files are rebuilt from the ledger, so a record whose line was written before the
    # crash but whose outcome was not yet final in the ledger does not appear twice.
    # Streamed as stored: a migration's million finished lines are copied, not decoded.
    # The rows streamed are those of every final outcome of the run: their seqs are the
    # records already final, read here rather than by a query of their own.
    done = SeqSet()
    with rewriting(out_dir) as sink:
        async for row in ledger.iter_run_items(plan.run_id):
            sink.write_line(Outcome(row.outcome), row.line)
            done.add(row.seq)
    return done, read_back


def _submitter(
    settings: Settings,
    plan: RunPlan,
    ep: Endpoints,
    *,
    session: aiohttp.ClientSession,
    limiter: QuotaLimiter,
    ledger: Ledger,
    stop: asyncio.Event,
    clock: Clock,
    sleep: Sleep,
) -> tuple[Submitter, TokenProvider]:
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
    submitter = Submitter(
        run_id=plan.run_id,
        client=client,
        tokens=tokens,
        limiter=limiter,
        ledger=ledger,
        routes=ep.routes,
        policy=RetryPolicy(
            max_attempts=settings.max_attempts,
            max_elapsed_s=settings.max_elapsed_s,
            base_delay_s=settings.base_delay_s,
            max_delay_s=settings.max_delay_s,
        ),
        requested=Action(settings.action),
        already_exists=KnownRefusal.already_exists(
            settings.already_exists_codes, settings.already_exists_pattern
        ),
        record_missing=KnownRefusal.record_missing(settings.record_missing_pattern),
        stop_after_forbidden=settings.stop_after_forbidden,
        sleep=interruptible(stop, sleep),
        clock=clock,
    )
    return submitter, tokens


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
    _refuse_own_files(settings, plan)
    out_dir = Path(plan.out_dir)
    started_wall = datetime.now(UTC)
    started = time.monotonic()
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
    limiter = QuotaLimiter(
        count=count,
        period_s=period_s,
        margin_s=settings.quota_margin_s,
        clock=clock,
        sleep=interruptible(hooks.stop, sleep),
    )
    tls = TlsSettings(
        client_cert=settings.client_cert,
        client_key=settings.client_key,
        ca_file=settings.ca_file,
        verify=not settings.insecure,
    )
    async with contextlib.AsyncExitStack() as stack:
        # The lock first (it creates the outcome directory, owner only): a run started on
        # the directory of a live run is refused before it touches anything there.
        stack.enter_context(run_lock(out_dir))
        ledger = await stack.enter_async_context(Ledger(settings.state_dir / LEDGER_FILE))
        await _take_directory(ledger, plan, out_dir, resume=resume, on_note=hooks.on_note)
        if not resume:
            _write_run_json(settings, plan, out_dir)
        done, read_back = await _open_run(ledger, settings, plan, out_dir, resume)
        hooks.on_start(plan.run_id, out_dir)
        for note in unchecked_notes(plan, again=resume or plan.parent_run_id is not None):
            hooks.on_note(note)
        ep = await stack.enter_async_context(endpoints(settings))
        warn_if_insecure(settings, ep)
        session = await stack.enter_async_context(
            make_session(tls=tls, concurrency=concurrency, timeout_s=settings.timeout_s)
        )
        submitter, tokens = _submitter(
            settings,
            plan,
            ep,
            session=session,
            limiter=limiter,
            ledger=ledger,
            stop=hooks.stop,
            clock=clock,
            sleep=sleep,
        )
        sink = stack.enter_context(OutcomeSink(out_dir, append=resume))
        engine = Engine(
            run_id=plan.run_id,
            preflight=preflight_for(settings, plan.kind),
            submitter=submitter,
            ledger=ledger,
            sink=sink,
            concurrency=concurrency,
            stop=hooks.stop,
            on_outcome=hooks.on_outcome,
            force=plan.force,
            skip_seqs=done,
            read_back_seqs=read_back,
            lineage=Lineage(plan.parent_run_id) if plan.parent_run_id else None,
        )
        await engine.run(
            plan_items(
                plan, ledger, on_diff=hooks.on_diff, on_note=hooks.on_note, stop=hooks.stop
            )
        )
        await ledger.flush()
        counts = await ledger.outcome_counts(plan.run_id)
        interrupted = hooks.stop.is_set() and engine.abort is None
        status = "aborted" if engine.abort else ("interrupted" if interrupted else "finished")
        summary: dict[str, Any] = {
            "run_id": plan.run_id,
            "status": status,
            "kind": plan.kind.value,
            "records": sum(counts.values()) + engine.not_sent,
            **{o.value: counts.get(o.value, 0) for o in Outcome},
            "not_sent": engine.not_sent,
            "requests": submitter.counters.requests,
            "http_429": submitter.counters.http_429,
            "requests_by_status": dict(submitter.counters.by_status),
            "token_replays": submitter.counters.token_replays,
            "token_refreshes": tokens.refreshes,
            "reconciliations": submitter.counters.reconciliations,
            "rate_limit": settings.rate_limit,
            "concurrency": concurrency,
            "max_requests_in_window": limiter.max_in_window,
            "started_at": started_wall.isoformat(),
            "elapsed_s": round(time.monotonic() - started, 3),
        }
        if engine.abort is not None:
            summary["abort_reason"] = str(engine.abort)
        if (lost := hooks.lost_output()) is not None:
            summary["stderr_lost"] = lost
        if ep.simulator is not None:
            summary["register"] = ep.simulator.stats()
        sink.write_summary(summary)
        await ledger.finish_run(plan.run_id, status=status, summary=summary)
    return RunResult(plan.run_id, out_dir, summary, aborted=engine.abort, interrupted=interrupted)
