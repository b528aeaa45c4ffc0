"""What each `wem-der` command does with its options: call the library, print, exit code.

Each function takes the command's `options` (cli/main.py's `parse`): the long option
names with underscores (`--with` is `corrected`), the arguments (`paths`, `run`) and
`command`. The settings among them are read by name (`config.SettingOptions`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from wem_der.cli.progress import Progress, estimate_records, summary_table
from wem_der.config import SettingOptions, Settings
from wem_der.errors import ConfigError, StoppedAtOnce, own_errors
from wem_der.files.pathtext import to_text
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import OutcomeRecord
from wem_der.register.followup import FOLLOWUP_JSONL, FollowedUp
from wem_der.register.followup import Status as FollowupStatus
from wem_der.register.verify import Status, VerifyResult
from wem_der.report.display import shown
from wem_der.run.api import ExportOptions, exported, followed_up, validated, verified
from wem_der.run.plan import RunPlan
from wem_der.run.resolve import (
    find_run,
    ledger_path,
    new_run,
    path_texts,
    record_kind,
    resubmitted_run,
    resumed_run,
)
from wem_der.run.results import RunResult, ValidationResult
from wem_der.run.wiring import Hooks, execute
from wem_der.send.quota import parse_rate


def make_hooks(progress: Progress | None, *, lost_output: Callable[[], str | None]) -> Hooks:
    """How a run reports to the terminal: its id, corrections, notes, the bar if any, and
    what stderr could not write (`lost_output`)."""
    hooks = Hooks(lost_output=lost_output)
    if progress is not None:
        hooks.on_outcome = progress.on_outcome
        hooks.on_status = progress.watch

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
    print(summary_table(result.summary.as_json()))
    print(f"outcomes: {shown(to_text(str(result.out_dir)))}")
    if result.exit_code == 3:
        print(f"resume with: wem-der resume {result.run_id}", file=sys.stderr)
    return result.exit_code


def _given(options: dict[str, Any]) -> SettingOptions:
    # The settings are read by name from among the command's options (see the docstring).
    return cast(SettingOptions, options)


async def _chosen(options: dict[str, Any]) -> tuple[Settings, RunPlan, bool]:
    """The settings and plan of the run submit, resume or resubmit names, and whether it
    resumes (see run/resolve.py)."""
    command, given = options["command"], _given(options)
    if command == "submit":
        settings, plan = new_run(
            options["paths"], options["out"], given, kind=options["kind"], force=options["force"]
        )
        return settings, plan, False
    if command == "resume":
        settings, plan = await resumed_run(
            options["run"],
            given,
            paths=options["paths"],
            out=options["out"],
            kind=options["kind"],
            force=options["force"],
        )
        return settings, plan, True
    settings, plan = await resubmitted_run(
        options["run"],
        given,
        only=options["only"],
        corrected=options["corrected"],
        out=options["out"],
    )
    return settings, plan, False


async def run_command(options: dict[str, Any], hooks: Hooks, progress: Progress | None) -> int:
    """submit, resume and resubmit: the run they name, to its end."""
    settings, plan, resume = await _chosen(options)
    if progress is not None and options["command"] == "submit":
        progress.total = await asyncio.to_thread(estimate_records, plan.inputs)
    try:
        with own_errors():
            result = await execute(settings, plan, hooks=hooks, resume=resume)
    except asyncio.CancelledError:
        # Only the CLI's second Ctrl-C cancels this task, and the process exits after it.
        raise StoppedAtOnce(plan.run_id) from None
    finally:
        if progress is not None:
            await progress.stop()
    return _finish(result)


async def read_register(options: dict[str, Any], *, show_progress: bool) -> int:
    """verify and export: the register read in bulk, with a bar on a terminal."""
    progress = Progress() if show_progress else None
    hooks = make_hooks(progress, lost_output=lambda: None)

    def advance(item: object) -> None:
        if progress is not None:
            progress.advance()

    if progress is not None:
        if options["command"] == "verify":
            paths = path_texts(options["paths"])
            progress.total = await asyncio.to_thread(estimate_records, paths)
        progress.start()
    try:
        with own_errors():
            if options["command"] == "verify":
                paths, out = options["paths"], options["out"]
                result = await verified(
                    paths, out, _given(options), hooks=hooks, on_verified=advance
                )
                return _verify_finish(result)
            # The filters and the settings are read by name from among the options.
            given = cast(ExportOptions, options)
            done = await exported(options["out"], given, hooks=hooks, on_record=advance)
    finally:
        if progress is not None:
            await progress.stop()
    # On stderr: stdout may be the export itself.
    print(f"{done.records} installations exported; {done.requests} requests", file=sys.stderr)
    return 0


def _verify_finish(result: VerifyResult) -> int:
    """The counts of `verify`; exit 0 only when the register holds every record as it is."""
    summary = result.summary
    counts = "  ".join(f"{status.value} {summary[status.value]}" for status in Status)
    print(f"{summary['records']} records: {counts}; {summary['requests']} requests")
    print(f"results: {shown(to_text(str(result.out_dir)))}")
    return 0 if result.all_same else 1


async def followup(options: dict[str, Any], *, show_progress: bool) -> int:
    """The run's Conditional records read back, with a bar on a terminal once their number
    is known; exit 0 only when every one was read."""
    progress = Progress() if show_progress else None
    hooks = make_hooks(progress, lost_output=lambda: None)

    def begin(records: int) -> None:
        if progress is not None:
            progress.total = records
            progress.start()

    def advance(followed: FollowedUp) -> None:
        if progress is not None:
            progress.advance()

    try:
        with own_errors():
            result = await followed_up(
                options["run"],
                options["out"],
                _given(options),
                hooks=hooks,
                on_total=begin,
                on_record=advance,
            )
    finally:
        if progress is not None:
            await progress.stop()
    summary = result.summary
    counts = "  ".join(f"{status.value} {summary[status.value]}" for status in FollowupStatus)
    print(
        f"run {shown(summary['run_id'])}: {summary['records']} conditional records read back:"
        f" {counts}; {summary['requests']} requests"
    )
    print(f"results: {shown(to_text(str(result.out_dir / FOLLOWUP_JSONL)))}")
    return result.exit_code


def validate(options: dict[str, Any]) -> int:
    """Pre-flight alone: print every invalid record with its file, line and field."""
    result, _ = asyncio.run(_validated(options))
    print(f"{result.records} records: {result.valid} valid, {result.invalid} invalid")
    return result.exit_code


async def _validated(options: dict[str, Any]) -> tuple[ValidationResult, Settings]:
    return await validated(
        options["paths"], _given(options), kind=options["kind"], on_invalid=_print_invalid
    )


def _print_invalid(checked: OutcomeRecord) -> None:
    where, nmi = shown(str(checked.source)), shown(str(checked.nmi))
    for error in checked.errors:
        path, detail = shown(str(error["path"])), shown(str(error["detail"]))
        print(f"{where}  nmi={nmi}  {path}: {detail}")


def dry_run(options: dict[str, Any]) -> int:
    """Validate and estimate, without any network."""
    result, settings = asyncio.run(_validated(options))
    count, period_s = parse_rate(settings.rate_limit)
    seconds = result.valid * period_s / count
    print(
        f"{result.records} records: {result.valid} valid, {result.invalid} invalid\n"
        f"at most {result.valid} requests (one per valid record; records unchanged since"
        f" their last accepted submission are skipped)\n"
        f"at least {seconds:.0f} s at the quota of {settings.rate_limit}"
    )
    return result.exit_code


async def report(options: dict[str, Any]) -> int:
    """A run's report, one NMI's history, or both."""
    from wem_der.report.collect import render
    from wem_der.report.html import write_page

    if options["run"] is None and options["nmi"] is None:
        raise ConfigError("report needs a RUN_ID (or DIR), or --nmi")
    run_id = None
    if options["run"] is not None:
        found, path = await find_run(_given(options), options["run"])
        run_id = str(found["run_id"])
    else:
        path = ledger_path(_given(options), None)
    async with Ledger(path) as ledger:
        text = await render(
            ledger,
            run_id=run_id,
            nmi=options["nmi"],
            kind=record_kind(options["kind"]),
            fmt=options["format"],
        )
    if options["out"] is None:
        print(text)
    else:
        write_page(options["out"], text)
    return 0
