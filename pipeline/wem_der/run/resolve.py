"""Which run a command means, and with which settings.

`submit` makes a new plan from its inputs. `resume`, `resubmit` and `report` find an
earlier run by its outcome directory (its `run.json`) or by its id (in a ledger), and
reuse the plan and the secret-free settings it recorded; settings given now override them.
Every function takes plain values (`given`: the settings given by name, see
`config.SettingOptions`), as the command line and the library both have them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wem_der.config import PathText, SettingOptions, Settings, settings_from
from wem_der.errors import ConfigError
from wem_der.files.pathtext import from_text, to_text
from wem_der.ledger.store import Ledger
from wem_der.read.sources import check_paths
from wem_der.records.outcomes import Outcome
from wem_der.records.shapes import RecordKind
from wem_der.run.plan import RunPlan, absolute, check_inputs, fingerprint, read_run_json
from wem_der.run.start import LEDGER_FILE
from wem_der.run.wiring import new_run_id

# What `resubmit` sends again unless told otherwise.
RESUBMITTED = ("failed", "rejected")


def record_kind(value: str) -> RecordKind:
    """The kind named `value` (`--kind`)."""
    try:
        return RecordKind(value)
    except ValueError:
        kinds = ", ".join(kind.value for kind in RecordKind)
        raise ConfigError(f"--kind: unknown kind {value!r}; the kinds are {kinds}") from None


def outcome_names(only: str | Iterable[str]) -> tuple[str, ...]:
    """Outcomes named in `only`: a comma-separated list (`--only`), or the names."""
    names = only.split(",") if isinstance(only, str) else only
    chosen = tuple(name.strip() for name in names if name.strip())
    unknown = set(chosen) - {o.value for o in Outcome}
    if unknown:
        raise ConfigError(f"--only: unknown outcome(s) {', '.join(sorted(unknown))}")
    return chosen


def path_texts(paths: Iterable[PathText]) -> list[str]:
    """Input paths as the readers take them (`-` for standard input)."""
    if isinstance(paths, str | os.PathLike):
        # A string is an iterable of paths to a type checker: one letter each.
        raise ConfigError(f"paths: give a list of paths, such as [{str(paths)!r}], not one path")
    return [os.fspath(path) for path in paths]


def _resolved(path: PathText) -> str:
    """An outcome directory or corrections file as a run records it: absolute, links
    resolved, so that it names the same file from any working directory."""
    return str(Path(path).resolve())


def _run_file(ref: str) -> dict[str, Any] | None:
    """The `run.json` of an outcome directory, when `ref` names one; None for a run id."""
    found = read_run_json(Path(ref))
    if found is None and (Path(ref).is_dir() or "/" in ref):
        raise ConfigError(
            f"{ref} holds no run.json, so it is not the outcome directory of a run (a run"
            " killed before it wrote run.json sent nothing: submit again)"
        )
    return found


def _ledgers(given: SettingOptions, found: dict[str, Any] | None) -> list[Path]:
    """Where a run's ledger may be, most likely first.

    The state directory given, if any; else where the run recorded it (its run.json); else
    the ledger of the register that the profile and settings name, then those of the other
    registers under the default state directory (each has its own, see `register_scope`).
    """
    recorded = (found or {}).get("settings", {}).get("state_dir")
    if (state_dir := given.get("state_dir")) is not None:
        return [Path(state_dir).absolute() / LEDGER_FILE]
    if recorded:
        return [Path(from_text(recorded)) / LEDGER_FILE]
    named = settings_from(given).state_dir
    root = Settings.model_fields["state_dir"].default.absolute()
    candidates = [named / LEDGER_FILE]
    if named.parent == root:
        candidates += sorted(set(root.glob(f"*/{LEDGER_FILE}")) - set(candidates))
    return candidates


def ledger_path(
    given: SettingOptions, found: dict[str, Any] | None, *, for_resume: bool = False
) -> Path:
    """The one ledger to read; an error, rather than a new empty ledger, when there is none.

    `for_resume`: a run found by its directory (`found`) may have been killed before it
    made its ledger, and sent nothing: its resume starts it there.
    """
    candidates = _ledgers(given, found)
    if found and for_resume:
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


async def find_run(
    given: SettingOptions, ref: str, *, for_resume: bool = False
) -> tuple[dict[str, Any], Path]:
    """A run's `run.json` (plan and settings), from its outcome directory or its id, and
    the path of its ledger."""
    found = _run_file(ref)
    if found is not None:
        return found, ledger_path(given, found, for_resume=for_resume)
    places = _ledgers(given, None)
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


async def _earlier_run(
    given: SettingOptions, ref: str, *, for_resume: bool
) -> tuple[Settings, RunPlan]:
    """The run `ref` names, with the settings it recorded overridden by those `given`.

    `resume` and `resubmit` reuse the settings recorded for the run they name (its
    `run.json`, which holds no secret): the same endpoints, client id, participant, quota
    and state directory. The client secret comes from WEMDER_CLIENT_SECRET or a secret file,
    as for `submit`.
    """
    found, ledger = await find_run(given, ref, for_resume=for_resume)
    stored = dict(found.get("settings") or {})
    # The ledger that holds the run, even if the run was found by its directory.
    stored["state_dir"] = to_text(str(ledger.parent))
    settings = settings_from(given, env=stored.get("env"), stored=stored)
    plan = RunPlan.from_json(found)
    check_inputs(plan)
    return settings, plan


def new_run(
    paths: Iterable[PathText],
    out: PathText,
    given: SettingOptions,
    *,
    kind: str = RecordKind.INSTALLATION,
    force: bool = False,
) -> tuple[Settings, RunPlan]:
    """The settings and plan of a `submit` of `paths` into `out`."""
    texts = path_texts(paths)
    check_paths(texts)
    settings = settings_from(given)
    inputs = absolute(texts)
    plan = RunPlan(
        run_id=new_run_id(),
        kind=record_kind(kind),
        inputs=inputs,
        out_dir=_resolved(out),
        force=force,
        fingerprints=fingerprint(inputs),
    )
    return settings, plan


async def resumed_run(
    ref: PathText,
    given: SettingOptions,
    *,
    paths: Iterable[PathText] = (),
    out: PathText | None = None,
    kind: str | None = None,
    force: bool | None = None,
) -> tuple[Settings, RunPlan]:
    """The settings and plan of the run `ref` (its id or outcome directory) names, to go on
    with.

    `resume` takes what `submit` took, so that a script can repeat it; what it repeats
    (`paths`, `out`, `kind`, `force`, when given) must be what the run was started with.
    """
    settings, plan = await _earlier_run(given, os.fspath(ref), for_resume=True)
    texts = path_texts(paths)
    differ = []
    if texts and absolute(texts) != plan.inputs:
        differ.append(f"inputs {' '.join(map(to_text, plan.inputs))}")
    if out is not None and _resolved(out) != plan.out_dir:
        differ.append(f"--out {to_text(plan.out_dir)}")
    if kind is not None and record_kind(kind) is not plan.kind:
        differ.append(f"--kind {plan.kind.value}")
    if force is not None and force != plan.force:
        differ.append("--force" if plan.force else "no --force")
    if differ:
        raise ConfigError(
            f"run {plan.run_id} was started with {', '.join(differ)}; a resume continues it as"
            " it was (to send something else, start a new run with submit)"
        )
    return settings, plan


async def resubmitted_run(
    ref: PathText,
    given: SettingOptions,
    *,
    only: str | Iterable[str] = RESUBMITTED,
    corrected: PathText | None = None,
    out: PathText | None = None,
) -> tuple[Settings, RunPlan]:
    """The settings and plan of a new run over the records of the run `ref` names whose
    outcome is one of `only`, always sent (`force`); with `corrected`, their versions there."""
    settings, parent = await _earlier_run(given, os.fspath(ref), for_resume=False)
    if corrected is not None:
        check_paths([os.fspath(corrected)])
    chosen = outcome_names(only)
    run_id = new_run_id()
    parent_dir = Path(parent.out_dir)
    out = out or parent_dir.parent / f"{parent_dir.name}-resubmit-{run_id}"
    plan = RunPlan(
        run_id=run_id,
        kind=parent.kind,
        inputs=parent.inputs,
        out_dir=_resolved(out),
        force=True,
        parent_run_id=parent.run_id,
        only=chosen,
        corrected=None if corrected is None else _resolved(corrected),
        fingerprints=parent.fingerprints,
    )
    return settings, plan
