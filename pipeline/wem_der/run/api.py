"""The library's functions, which `wem_der` exports: `submit`, `resume`, `resubmit`,
`validate`, `verify`, `export` and `followup`.

Each does what its command does. Its keywords are the command's long options with
underscores (`--rate-limit` is `rate_limit=`, `--with` is `with_=`), with the same
precedence: a keyword given (not None) beats its `WEMDER_*` variable, which beats the
profile. A misspelt keyword is a type error for mypy and a `ConfigError` at run time.

Nothing reaches the caller but a value or the project's own exception (errors.py): an
aborted run raises its `RunAborted`, whose `run_id` names the run to resume, and errors
of a run's tasks come out of their task group as one error, not as an `ExceptionGroup`.
Nothing here prints, configures logging or installs a signal handler; that is the CLI's.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Literal, TypedDict, Unpack, cast

from wem_der.config import PathText, SettingOptions, Settings, settings_from
from wem_der.errors import ConfigError, InputError, own_errors
from wem_der.files.pathtext import to_text
from wem_der.ledger.store import Ledger
from wem_der.read.sources import STDIN, check_paths
from wem_der.records.outcomes import OutcomeRecord
from wem_der.records.shapes import RecordKind
from wem_der.register.export import ExportResult
from wem_der.register.export import export as export_register
from wem_der.register.followup import FollowedUp, FollowupResult, conditional_outcomes, follow_up
from wem_der.register.search import Filters, Held
from wem_der.register.verify import Verified, VerifyResult
from wem_der.register.verify import verify as verify_register
from wem_der.run.plan import RunPlan, numbered
from wem_der.run.resolve import (
    RESUBMITTED,
    find_run,
    new_run,
    path_texts,
    record_kind,
    resubmitted_run,
    resumed_run,
)
from wem_der.run.results import RunResult, ValidationResult
from wem_der.run.wiring import Hooks, execute, opened_reader, preflight_for

Kind = Literal["installation", "nmi"]


class SubmitOptions(SettingOptions, total=False):
    """The keywords of `submit`: `wem-der submit`'s options."""

    kind: Kind
    force: bool


class ResumeOptions(SettingOptions, total=False):
    """The keywords of `resume`: `submit`'s, which must then be the run's."""

    paths: Iterable[PathText]
    out: PathText
    kind: Kind
    force: bool


class ExportOptions(SettingOptions, total=False):
    """The keywords of `export`: `wem-der export`'s filters, and the settings."""

    stage: Literal["Confirmed", "Conditional"]
    equipment_type: str
    device_type: str
    from_commissioning_date: str
    to_commissioning_date: str
    nmi_file: PathText


class ValidateOptions(TypedDict, total=False):
    """The keywords of `validate`: `wem-der validate`'s options."""

    kind: Kind
    allow_unknown_fields: bool
    env: str
    config_dir: PathText


async def submit(
    paths: Iterable[PathText], *, out: PathText, **options: Unpack[SubmitOptions]
) -> RunResult:
    """Send the records of `paths` to the register, as `wem-der submit PATH... --out OUT`."""
    _refuse_unknown("submit", options, SubmitOptions.__optional_keys__)
    with own_errors():
        settings, plan = new_run(
            paths,
            out,
            options,
            kind=options.get("kind") or "installation",
            force=options.get("force") or False,
        )
        return _finished(await execute(settings, plan, hooks=Hooks()))


async def resume(run: PathText, **options: Unpack[ResumeOptions]) -> RunResult:
    """Go on with a stopped or killed run, named by its id or its outcome directory, as
    `wem-der resume RUN`; the client secret is never recorded, so give it again."""
    _refuse_unknown("resume", options, ResumeOptions.__optional_keys__)
    with own_errors():
        settings, plan = await resumed_run(
            run,
            options,
            paths=options.get("paths") or (),
            out=options.get("out"),
            kind=options.get("kind"),
            force=options.get("force"),
        )
        return _finished(await execute(settings, plan, hooks=Hooks(), resume=True))


async def resubmit(
    run: PathText,
    *,
    only: str | Iterable[str] = RESUBMITTED,
    with_: PathText | None = None,
    out: PathText | None = None,
    **settings: Unpack[SettingOptions],
) -> RunResult:
    """Send again the records of `run` whose outcome is one of `only`, as a new run linked
    to it, as `wem-der resubmit RUN --only ... --with FILE --out DIR`."""
    known = SettingOptions.__optional_keys__
    _refuse_unknown("resubmit", settings, known, also=("only", "with_", "out"))
    with own_errors():
        chosen, plan = await resubmitted_run(run, settings, only=only, corrected=with_, out=out)
        return _finished(await execute(chosen, plan, hooks=Hooks()))


async def validate(
    paths: Iterable[PathText], **options: Unpack[ValidateOptions]
) -> ValidationResult:
    """Pre-flight the records of `paths`, sending nothing, as `wem-der validate PATH...`."""
    _refuse_unknown("validate", options, ValidateOptions.__optional_keys__)
    # All but `kind` are setting options, which is all `settings_from` reads.
    given = cast(SettingOptions, options)
    with own_errors():
        result, _ = await validated(paths, given, kind=options.get("kind") or "installation")
        return result


async def validated(
    paths: Iterable[PathText],
    given: SettingOptions,
    *,
    kind: str,
    on_invalid: Callable[[OutcomeRecord], None] = lambda outcome: None,
) -> tuple[ValidationResult, Settings]:
    """What `validate` and a dry run find in `paths`, each invalid record also given to
    `on_invalid`; and the settings it was checked under."""
    texts = path_texts(paths)
    check_paths(texts)
    settings = settings_from(given)
    preflight = preflight_for(settings, record_kind(kind))
    records = invalid = 0
    async for seq, item in numbered(texts):
        records += 1
        checked = preflight.check(seq, item)
        if isinstance(checked, OutcomeRecord):
            invalid += 1
            on_invalid(checked)
    return ValidationResult(records=records, valid=records - invalid, invalid=invalid), settings


async def verify(
    paths: Iterable[PathText], *, out: PathText, **settings: Unpack[SettingOptions]
) -> VerifyResult:
    """Check the records of `paths` against the register, writing nothing to it, as
    `wem-der verify PATH... --out DIR`; `result.all_same` says whether it holds them all."""
    _refuse_unknown("verify", settings, SettingOptions.__optional_keys__)
    with own_errors():
        return await verified(paths, out, settings, hooks=Hooks())


async def verified(
    paths: Iterable[PathText],
    out: PathText,
    given: SettingOptions,
    *,
    hooks: Hooks,
    on_verified: Callable[[Verified], None] = lambda verified: None,
) -> VerifyResult:
    """What `verify` finds, each record also given to `on_verified` (a progress bar)."""
    texts = path_texts(paths)
    check_paths(texts)
    settings = settings_from(given)
    preflight = preflight_for(settings, RecordKind.INSTALLATION)
    async with opened_reader(settings, hooks=hooks) as reader:
        return await verify_register(
            numbered(texts, stop=hooks.stop),
            reader,
            Path(os.fspath(out)),
            preflight=preflight,
            on_verified=on_verified,
        )


async def export(*, out: PathText, **options: Unpack[ExportOptions]) -> ExportResult:
    """Write the installations the register holds, those the filters select, as
    `wem-der export --out FILE`: `.jsonl`, `.jsonl.gz`, or `-` for standard output."""
    _refuse_unknown("export", options, ExportOptions.__optional_keys__)
    with own_errors():
        return await exported(out, options, hooks=Hooks())


async def exported(
    out: PathText,
    options: ExportOptions,
    *,
    hooks: Hooks,
    on_record: Callable[[Held], None] = lambda held: None,
) -> ExportResult:
    """What `export` writes, each installation also given to `on_record`."""
    text = os.fspath(out)
    if text != STDIN and not text.endswith((".jsonl", ".jsonl.gz")):
        raise ConfigError(f"--out {text!r}: give a .jsonl or .jsonl.gz file, or - for stdout")
    filters = Filters(
        installation_stage=options.get("stage"),
        equipment_type=options.get("equipment_type"),
        device_type=options.get("device_type"),
        from_commissioning_date=options.get("from_commissioning_date"),
        to_commissioning_date=options.get("to_commissioning_date"),
    )
    nmi_file = options.get("nmi_file")
    nmis = None if nmi_file is None else _nmis_in(Path(os.fspath(nmi_file)))
    # All but the filters are setting options, which is all `settings_from` reads.
    settings = settings_from(cast(SettingOptions, options))
    async with opened_reader(settings, hooks=hooks) as reader:
        target = sys.stdout.buffer if text == STDIN else Path(text)
        return await export_register(reader, filters, target, nmis=nmis, on_record=on_record)


async def followup(
    run: PathText, *, out: PathText | None = None, **settings: Unpack[SettingOptions]
) -> FollowupResult:
    """Read back from the register the records of `run` (its id or outcome directory) that
    ended conditional, as `wem-der followup RUN --out DIR`; `result.all_read` says whether
    every one was read. The run's recorded settings are used, as by `resume`: give the
    client secret again."""
    _refuse_unknown("followup", settings, SettingOptions.__optional_keys__, also=("out",))
    with own_errors():
        return await followed_up(run, out, settings, hooks=Hooks())


async def followed_up(
    run: PathText,
    out: PathText | None,
    given: SettingOptions,
    *,
    hooks: Hooks,
    on_total: Callable[[int], None] = lambda records: None,
    on_record: Callable[[FollowedUp], None] = lambda followed: None,
) -> FollowupResult:
    """What `followup` finds, written into `out` (default: the run's outcome directory);
    `on_total` is told how many records there are before the first is read, and
    `on_record` sees each one read (a progress bar)."""
    found, ledger_file = await find_run(given, os.fspath(run))
    plan = RunPlan.from_json(found)
    if plan.kind is not RecordKind.INSTALLATION:
        raise ConfigError(
            f"run {plan.run_id} sent {plan.kind.value} records, and the NMI API has no search:"
            " follow up a run of installation records"
        )
    # The settings the run recorded, as `resume` reuses them (run/resolve.py), with the
    # ledger that holds the run; settings given now override them.
    stored = dict(found.get("settings") or {})
    stored["state_dir"] = to_text(str(ledger_file.parent))
    settings = settings_from(given, env=stored.get("env"), stored=stored)
    async with Ledger(ledger_file) as ledger:
        records = await conditional_outcomes(ledger, plan.run_id)
    on_total(len(records))
    out_dir = Path(plan.out_dir if out is None else os.fspath(out))
    async with opened_reader(settings, hooks=hooks) as reader:
        return await follow_up(records, reader, out_dir, run_id=plan.run_id, on_record=on_record)


def _nmis_in(path: Path) -> list[str]:
    """The NMIs of an --nmi-file: one a line; blank lines and lines from `#` on are not."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the NMI file {path}: {exc}") from None
    return [nmi for line in lines if (nmi := line.split("#", 1)[0].strip())]


def _finished(result: RunResult) -> RunResult:
    """`result`, unless the run was aborted: then why, naming the run to resume."""
    if result.aborted is None:
        return result
    result.aborted.run_id = result.run_id
    raise result.aborted


def _refuse_unknown(
    function: str, given: Mapping[str, object], known: Collection[str], also: Iterable[str] = ()
) -> None:
    """A `ConfigError` for a keyword `function` does not take, naming the closest it does.

    mypy finds a misspelt keyword in a caller's code; this finds one in a `**options` of
    a dict, which mypy cannot see into.
    """
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, [*known, *also], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{function}() got an unknown keyword {name!r}{hint}")
