"""What each `wem-der` command does with its parsed arguments: settings, plan, run, print."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from pipeline.config import Settings, load_settings, read_secret_file
from pipeline.errors import ConfigError
from pipeline.ledger import Ledger
from pipeline.limiter import parse_rate
from pipeline.models import Enumerations, RecordKind
from pipeline.outcomes import Outcome, OutcomeRecord
from pipeline.plan import RunPlan, absolute, numbered
from pipeline.preflight import Preflight
from pipeline.progress import Progress, summary_table
from pipeline.run import LEDGER_FILE, Hooks, RunResult, execute, new_run_id
from pipeline.sources import check_paths

# Flags that map one-to-one onto a Settings field.
_SETTING_FLAGS = (
    "base_url",
    "nmi_base_url",
    "token_url",
    "client_id",
    "participant_id",
    "state_dir",
    "rate_limit",
    "concurrency",
    "action",
    "compression",
    "timeout_s",
    "max_attempts",
    "client_cert",
    "client_key",
    "ca_file",
    "insecure",
    "allow_unknown_fields",
)


def settings_from(args: argparse.Namespace, env: str | None = None) -> Settings:
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in _SETTING_FLAGS}
    secret = getattr(args, "client_secret", None)
    secret_file = getattr(args, "client_secret_file", None)
    if secret_file is not None:
        secret = read_secret_file(secret_file)
    overrides["client_secret"] = secret
    if overrides.get("rate_limit"):
        try:
            parse_rate(overrides["rate_limit"])
        except ValueError as exc:
            raise ConfigError(f"--rate-limit: {exc}") from None
    return load_settings(
        getattr(args, "env", None) or env or "local",
        overrides=overrides,
        config_dir=getattr(args, "config_dir", None),
    )


def make_hooks(show_progress: bool) -> Hooks:
    hooks = Hooks()
    if show_progress:
        progress = Progress()
        hooks.on_outcome = progress.on_outcome
        hooks.progress = progress  # type: ignore[attr-defined]
    hooks.on_start = lambda run_id, out_dir: print(
        f"run {run_id}: outcomes in {out_dir}", file=sys.stderr, flush=True
    )
    hooks.on_diff = _print_diff
    return hooks


def _print_diff(nmi: str, lines: list[str]) -> None:
    print(f"corrected {nmi}:" if lines else f"corrected {nmi}: no change", file=sys.stderr)
    for line in lines:
        print(f"    {line}", file=sys.stderr)


def _finish(result: RunResult) -> int:
    print(summary_table(result.summary))
    print(f"outcomes: {result.out_dir}")
    if result.exit_code == 3:
        print(f"resume with: wem-der resume {result.run_id}", file=sys.stderr)
    return result.exit_code


def _run_file(ref: str) -> dict[str, Any] | None:
    """The `run.json` of an outcome directory, when `ref` names one."""
    path = Path(ref) / "run.json"
    return dict(orjson.loads(path.read_bytes())) if path.is_file() else None


async def _find_run(settings: Settings, ref: str) -> dict[str, Any]:
    """A run's `run.json` plan, from its id (via the ledger) or its outcome directory."""
    from_dir = _run_file(ref)
    if from_dir is not None:
        return from_dir
    async with Ledger(settings.state_dir / LEDGER_FILE) as ledger:
        row = await ledger.get_run(ref)
    if row is None:
        raise ConfigError(
            f"no run {ref!r} in {settings.state_dir / LEDGER_FILE}, and no {ref}/run.json"
        )
    plan = row.settings.get("plan")
    if not isinstance(plan, dict):
        raise ConfigError(f"run {ref!r} has no stored plan")
    return plan


def _submit_plan(args: argparse.Namespace) -> RunPlan:
    return RunPlan(
        run_id=new_run_id(),
        kind=RecordKind(args.kind),
        inputs=absolute(args.paths),
        out_dir=str(args.out.resolve()),
        force=args.force,
    )


def _resubmit_plan(args: argparse.Namespace, parent: RunPlan) -> RunPlan:
    """A new run over the chosen records of `parent`, always sent (`force`)."""
    only = tuple(o.strip() for o in args.only.split(",") if o.strip())
    unknown = set(only) - {o.value for o in Outcome}
    if unknown:
        raise ConfigError(f"--only: unknown outcome(s) {', '.join(sorted(unknown))}")
    run_id = new_run_id()
    parent_dir = Path(parent.out_dir)
    out = args.out or parent_dir.parent / f"{parent_dir.name}-resubmit-{run_id}"
    return RunPlan(
        run_id=run_id,
        kind=parent.kind,
        inputs=parent.inputs,
        out_dir=str(Path(out).resolve()),
        force=True,
        parent_run_id=parent.run_id,
        only=only,
        corrected=str(args.corrected.resolve()) if args.corrected else None,
    )


async def run_command(args: argparse.Namespace, hooks: Hooks) -> int:
    """submit, resume and resubmit."""
    progress: Progress | None = getattr(hooks, "progress", None)
    if args.command == "submit":
        check_paths(args.paths)
        settings = settings_from(args)
        plan, resume = _submit_plan(args), False
    else:
        found = await _find_run(settings_from(args), args.run)
        settings = settings_from(args, env=found.get("settings", {}).get("env"))
        parent = RunPlan.from_json(found)
        if args.command == "resume":
            plan, resume = parent, True
            check_paths([p for p in plan.inputs if p != "-"])
        else:
            plan, resume = _resubmit_plan(args, parent), False
    if progress is not None:
        progress.start()
    try:
        result = await execute(settings, plan, hooks=hooks, resume=resume)
    finally:
        if progress is not None:
            await progress.stop()
    return _finish(result)


def validate(args: argparse.Namespace) -> int:
    """Pre-flight alone: print every invalid record with its file, line and field."""
    check_paths(args.paths)
    settings = settings_from(args)
    preflight = _preflight(settings, RecordKind(args.kind))
    counts = asyncio.run(_validate(preflight, args.paths))
    print(f"{counts['records']} records: {counts['valid']} valid, {counts['invalid']} invalid")
    return 1 if counts["invalid"] else 0


def _preflight(settings: Settings, kind: RecordKind) -> Preflight:
    enumerations = (
        Enumerations.from_file(settings.enumerations_file) if settings.enumerations_file else None
    )
    return Preflight(kind, settings.allow_unknown_fields, enumerations)


async def _validate(preflight: Preflight, paths: list[str]) -> dict[str, int]:
    counts = {"records": 0, "valid": 0, "invalid": 0}
    async for seq, item in numbered(paths):
        counts["records"] += 1
        checked = preflight.check(seq, item)
        if isinstance(checked, OutcomeRecord):
            counts["invalid"] += 1
            for error in checked.errors:
                print(f"{checked.source}  nmi={checked.nmi}  {error['path']}: {error['detail']}")
        else:
            counts["valid"] += 1
    return counts


def dry_run(args: argparse.Namespace) -> int:
    """Validate and estimate, without any network."""
    check_paths(args.paths)
    settings = settings_from(args)
    counts = asyncio.run(_validate(_preflight(settings, RecordKind(args.kind)), args.paths))
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
    from pipeline.report import render

    settings = settings_from(args)
    if args.run is None and args.nmi is None:
        raise ConfigError("report needs a RUN_ID (or DIR), or --nmi")
    run_id = None
    if args.run is not None:
        run_id = (await _find_run(settings, args.run))["run_id"]
    async with Ledger(settings.state_dir / LEDGER_FILE) as ledger:
        print(await render(ledger, run_id=run_id, nmi=args.nmi, kind=RecordKind(args.kind)))
    return 0
