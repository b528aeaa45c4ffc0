"""Which run a command means, and with which settings.

`submit` makes a new plan from its flags. `resume`, `resubmit` and `report` find an
earlier run by its outcome directory (its `run.json`) or by its id (in a ledger), and
reuse the plan and the secret-free settings it recorded; flags given now override them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wem_der.config import (
    PATH_FIELDS,
    SECRET_FIELDS,
    Settings,
    load_settings,
    read_secret_file,
)
from wem_der.errors import ConfigError
from wem_der.files.pathtext import from_text, to_text
from wem_der.ledger.store import Ledger
from wem_der.read.sources import check_paths
from wem_der.records.outcomes import Outcome
from wem_der.records.shapes import RecordKind
from wem_der.run.plan import RunPlan, absolute, check_inputs, fingerprint, read_run_json
from wem_der.run.wiring import LEDGER_FILE, new_run_id

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
# Settings a run records and `resume` / `resubmit` reuse: all but the profile's name (given
# separately) and the secret (never recorded).
_REUSED = frozenset(Settings.model_fields) - {"env", *SECRET_FIELDS}


def settings_from(
    args: argparse.Namespace, env: str | None = None, stored: dict[str, Any] | None = None
) -> Settings:
    """Settings from the profile, the environment and the flags.

    `stored`: the secret-free settings an earlier run recorded (its `run.json`); they take
    the place of the profile and the environment, and flags given now still override them.
    The client secret is never stored, so it comes from the environment or a flag as ever.
    """
    overrides: dict[str, Any] = {
        name: from_text(value) if name in PATH_FIELDS else value
        for name, value in (stored or {}).items()
        if name in _REUSED and value is not None
    }
    flags = {name: getattr(args, name, None) for name in _SETTING_FLAGS}
    overrides.update({name: value for name, value in flags.items() if value is not None})
    secret = getattr(args, "client_secret", None)
    secret_file = getattr(args, "client_secret_file", None)
    if secret_file is not None:
        secret = read_secret_file(secret_file)
    overrides["client_secret"] = secret
    settings = load_settings(
        getattr(args, "env", None) or env or "local",
        overrides=overrides,
        config_dir=getattr(args, "config_dir", None),
    )
    # Absolute, so that `resume` finds the ledger and the certificates from any directory.
    paths = {name: getattr(settings, name) for name in PATH_FIELDS}
    return settings.model_copy(
        update={name: path.absolute() for name, path in paths.items() if path is not None}
    )


def _run_file(ref: str) -> dict[str, Any] | None:
    """The `run.json` of an outcome directory, when `ref` names one; None for a run id."""
    found = read_run_json(Path(ref))
    if found is None and (Path(ref).is_dir() or "/" in ref):
        raise ConfigError(
            f"{ref} holds no run.json, so it is not the outcome directory of a run (a run"
            " killed before it wrote run.json sent nothing: submit again)"
        )
    return found


def _ledgers(args: argparse.Namespace, found: dict[str, Any] | None) -> list[Path]:
    """Where a run's ledger may be, most likely first.

    --state-dir if given; else where the run recorded it (its run.json); else the ledger of
    the register that the profile and flags name, then those of the other registers under
    the default state directory (each register has its own, see `register_scope`).
    """
    flag = getattr(args, "state_dir", None)
    recorded = (found or {}).get("settings", {}).get("state_dir")
    if flag is not None:
        return [Path(flag).absolute() / LEDGER_FILE]
    if recorded:
        return [Path(from_text(recorded)) / LEDGER_FILE]
    state_dir = settings_from(args).state_dir
    root = Settings.model_fields["state_dir"].default.absolute()
    candidates = [state_dir / LEDGER_FILE]
    if state_dir.parent == root:
        candidates += sorted(set(root.glob(f"*/{LEDGER_FILE}")) - set(candidates))
    return candidates


def ledger_path(args: argparse.Namespace, found: dict[str, Any] | None) -> Path:
    """The one ledger to read; an error, rather than a new empty ledger, when there is none."""
    candidates = _ledgers(args, found)
    # A run killed before it made its ledger sent nothing: `resume DIR` may start it.
    if found and getattr(args, "command", None) == "resume":
        return candidates[0]
    existing = [path for path in candidates if path.is_file()]
    if candidates[0] in existing or len(existing) == 1:
        return existing[0]
    if not existing:
        raise _no_ledger(candidates[0])
    raise ConfigError(
        f"several ledgers, one per register: {', '.join(map(str, existing))}; pick one with"
        " --state-dir"
    )


def _no_ledger(path: Path) -> ConfigError:
    return ConfigError(
        f"no ledger at {path}: pass --state-dir as given to the run, or the run's outcome directory"
    )


async def find_run(args: argparse.Namespace, ref: str) -> tuple[dict[str, Any], Path]:
    """A run's `run.json` (plan and settings), from its outcome directory or its id, and
    the path of its ledger."""
    found = _run_file(ref)
    if found is not None:
        return found, ledger_path(args, found)
    places = _ledgers(args, None)
    candidates = [path for path in places if path.is_file()]
    if not candidates:
        raise _no_ledger(places[0])
    for path in candidates:
        async with Ledger(path) as ledger:
            row = await ledger.get_run(ref)
        if row is None:
            continue
        plan = row.settings.get("plan")
        if not isinstance(plan, dict):
            raise ConfigError(f"run {ref!r} has no stored plan in {path}")
        return {**plan, "settings": row.settings.get("settings") or {}}, path
    raise ConfigError(
        f"no run {ref!r} in {', '.join(map(str, candidates))}, and no directory {ref}/run.json"
    )


def _same_as_run(args: argparse.Namespace, plan: RunPlan) -> None:
    """`resume` takes the flags `submit` took, so that a script can repeat them; what it
    repeats must be what the run was started with."""
    differ = []
    if args.paths and absolute(args.paths) != plan.inputs:
        differ.append(f"inputs {' '.join(map(to_text, plan.inputs))}")
    if args.out is not None and str(args.out.resolve()) != plan.out_dir:
        differ.append(f"--out {to_text(plan.out_dir)}")
    if args.kind is not None and args.kind != plan.kind.value:
        differ.append(f"--kind {plan.kind.value}")
    if args.force is not None and args.force != plan.force:
        differ.append("--force" if plan.force else "no --force")
    if differ:
        raise ConfigError(
            f"run {plan.run_id} was started with {', '.join(differ)}; a resume continues it as"
            " it was (to send something else, start a new run with submit)"
        )


def _submit_plan(args: argparse.Namespace) -> RunPlan:
    inputs = absolute(args.paths)
    return RunPlan(
        run_id=new_run_id(),
        kind=RecordKind(args.kind),
        inputs=inputs,
        out_dir=str(args.out.resolve()),
        force=args.force,
        fingerprints=fingerprint(inputs),
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
        fingerprints=parent.fingerprints,
    )


async def chosen_run(args: argparse.Namespace) -> tuple[Settings, RunPlan, bool]:
    """The settings and plan of the run that submit, resume or resubmit names, and whether
    it resumes.

    `resume` and `resubmit` reuse the settings recorded for the run they name (its
    `run.json`, which holds no secret): the same endpoints, client id, participant, quota
    and state directory. Flags given to them override those; the client secret comes from
    WEMDER_CLIENT_SECRET or --client-secret-file, as for `submit`.
    """
    if args.command == "submit":
        check_paths(args.paths)
        return settings_from(args), _submit_plan(args), False
    found, ledger = await find_run(args, args.run)
    stored = dict(found.get("settings") or {})
    # The ledger that holds the run, even if the run was found by its directory.
    stored["state_dir"] = to_text(str(ledger.parent))
    settings = settings_from(args, env=stored.get("env"), stored=stored)
    parent = RunPlan.from_json(found)
    check_inputs(parent)
    if args.command == "resume":
        _same_as_run(args, parent)
        return settings, parent, True
    if args.corrected is not None:
        check_paths([str(args.corrected)])
    return settings, _resubmit_plan(args, parent), False
