"""How a run begins: the outcome directory and the ledger made its own, before a record is read.

A run refuses an input that is a file it writes, takes an outcome directory no unfinished
run holds, records itself in `run.json` and in the ledger, and on resume rebuilds its
outcome files from the ledger and learns which records are done and which were on the
wire when it died.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from wem_der.config import Settings
from wem_der.errors import ConfigError, InputError
from wem_der.files.pathtext import to_text
from wem_der.files.private import write_json_atomic
from wem_der.ledger.outcome_files import PROBLEMS_CSV, SUMMARY_JSON, outcome_file, rewriting
from wem_der.ledger.store import Ledger
from wem_der.read.sources import STDIN
from wem_der.records.outcomes import Action, Outcome
from wem_der.run.endpoints import SIMULATOR_FILE
from wem_der.run.lock import LOCK_FILE
from wem_der.run.plan import RUN_JSON, RunPlan, read_run_json
from wem_der.run.seqset import SeqSet
from wem_der.send.quota_store import QUOTA_FILE

LEDGER_FILE = "ledger.sqlite3"
# Answers that say a write was refused before it was applied: a record whose last write
# got one of these needs no read-back on resume (a 500, 502 or 504 may hide a write that
# was applied, and no answer at all certainly may).
REFUSED_UNAPPLIED = frozenset({400, 401, 403, 404, 405, 411, 413, 415, 422, 429, 503})


async def begin(
    ledger: Ledger,
    settings: Settings,
    plan: RunPlan,
    *,
    resume: bool,
    on_note: Callable[[str], None],
) -> tuple[SeqSet, dict[int, Action]]:
    """Make the outcome directory (whose lock the caller holds) and the ledger this run's:
    (records already final, records whose write was on the wire when a run died, with the
    action of that write)."""
    out_dir = Path(plan.out_dir)
    await _take_directory(ledger, plan, out_dir, resume=resume, on_note=on_note)
    if not resume:
        _write_run_json(settings, plan, out_dir)
    return await _open_run(ledger, settings, plan, out_dir, resume)


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


def refuse_own_files(settings: Settings, plan: RunPlan) -> None:
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
        for database in (LEDGER_FILE, SIMULATOR_FILE, QUOTA_FILE)
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
