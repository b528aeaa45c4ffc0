"""What each `wem-der` command does with its parsed arguments: settings, plan, run, print."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from wem_der.cli.progress import Progress, estimate_records, summary_table
from wem_der.errors import ConfigError, StoppedAtOnce
from wem_der.files.pathtext import to_text
from wem_der.ledger.store import Ledger
from wem_der.read.sources import check_paths
from wem_der.records.outcomes import OutcomeRecord
from wem_der.records.preflight import Preflight
from wem_der.records.shapes import RecordKind
from wem_der.report.display import shown
from wem_der.run.plan import numbered
from wem_der.run.resolve import chosen_run, find_run, ledger_path, settings_from
from wem_der.run.wiring import Hooks, RunResult, execute, preflight_for
from wem_der.send.quota import parse_rate


def make_hooks(progress: Progress | None, *, lost_output: Callable[[], str | None]) -> Hooks:
    """How a run reports to the terminal: its id, corrections, notes, the bar if any, and
    what stderr could not write (`lost_output`)."""
    hooks = Hooks(lost_output=lost_output)
    if progress is not None:
        hooks.on_outcome = progress.on_outcome

    def on_start(run_id: str, out_dir: Path) -> None:
        print(
            f"run {run_id}: outcomes in {shown(to_text(str(out_dir)))}", file=sys.stderr, flush=True
        )
        if progress is not None:
            progress.start()

    hooks.on_start = on_start
    hooks.on_diff = _print_diff
    hooks.on_note = lambda text: print(f"note: {shown(text)}", file=sys.stderr, flush=True)
    return hooks


def _print_diff(nmi: str, lines: list[str]) -> None:
    nmi = shown(nmi)
    print(f"corrected {nmi}:" if lines else f"corrected {nmi}: no change", file=sys.stderr)
    for line in lines:
        print(f"    {shown(line)}", file=sys.stderr)


def _finish(result: RunResult) -> int:
    print(summary_table(result.summary))
    print(f"outcomes: {shown(to_text(str(result.out_dir)))}")
    if result.exit_code == 3:
        print(f"resume with: wem-der resume {result.run_id}", file=sys.stderr)
    return result.exit_code


async def run_command(args: argparse.Namespace, hooks: Hooks, progress: Progress | None) -> int:
    """submit, resume and resubmit: the run they name (see `runs.chosen_run`), to its end."""
    settings, plan, resume = await chosen_run(args)
    if progress is not None and args.command == "submit":
        progress.total = await asyncio.to_thread(estimate_records, plan.inputs)
    try:
        result = await execute(settings, plan, hooks=hooks, resume=resume)
    except asyncio.CancelledError:
        # Only the CLI's second Ctrl-C cancels this task, and the process exits after it.
        raise StoppedAtOnce(plan.run_id) from None
    finally:
        if progress is not None:
            await progress.stop()
    return _finish(result)


def validate(args: argparse.Namespace) -> int:
    """Pre-flight alone: print every invalid record with its file, line and field."""
    check_paths(args.paths)
    settings = settings_from(args)
    preflight = preflight_for(settings, RecordKind(args.kind))
    counts = asyncio.run(_validate(preflight, args.paths))
    print(f"{counts['records']} records: {counts['valid']} valid, {counts['invalid']} invalid")
    return 1 if counts["invalid"] else 0


async def _validate(preflight: Preflight, paths: list[str]) -> dict[str, int]:
    counts = {"records": 0, "valid": 0, "invalid": 0}
    async for seq, item in numbered(paths):
        counts["records"] += 1
        checked = preflight.check(seq, item)
        if isinstance(checked, OutcomeRecord):
            counts["invalid"] += 1
            where, nmi = shown(str(checked.source)), shown(str(checked.nmi))
            for error in checked.errors:
                path, detail = shown(str(error["path"])), shown(str(error["detail"]))
                print(f"{where}  nmi={nmi}  {path}: {detail}")
        else:
            counts["valid"] += 1
    return counts


def dry_run(args: argparse.Namespace) -> int:
    """Validate and estimate, without any network."""
    check_paths(args.paths)
    settings = settings_from(args)
    counts = asyncio.run(_validate(preflight_for(settings, RecordKind(args.kind)), args.paths))
    count, period_s = parse_rate(settings.rate_limit)
    seconds = counts["valid"] * period_s / count
    print(
        f"{counts['records']} records: {counts['valid']} valid, {counts['invalid']} invalid\n"
        f"at most {counts['valid']} requests (one per valid record; records unchanged since"
        f" their last accepted submission are skipped)\n"
        f"at least {seconds:.0f} s at the quota of {settings.rate_limit}"
    )
    return 1 if counts["invalid"] else 0


async def report(args: argparse.Namespace) -> int:
    """A run's report, one NMI's history, or both."""
    from wem_der.report.collect import render

    if args.run is None and args.nmi is None:
        raise ConfigError("report needs a RUN_ID (or DIR), or --nmi")
    run_id = None
    if args.run is not None:
        found, path = await find_run(args, args.run)
        run_id = str(found["run_id"])
    else:
        path = ledger_path(args, None)
    async with Ledger(path) as ledger:
        text = await render(
            ledger, run_id=run_id, nmi=args.nmi, kind=RecordKind(args.kind), fmt=args.format
        )
    print(text)
    return 0
