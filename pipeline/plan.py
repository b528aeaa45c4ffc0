"""What a run sends: its inputs, numbered, or the chosen records of an earlier run.

Every input record gets a sequence number from its position across the inputs. The
number is stable, so a resumed run, and a re-submission of an earlier one, name the same
record by the same number.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.diff import field_changes
from pipeline.errors import ConfigError, InputError
from pipeline.ledger import Ledger
from pipeline.models import RecordKind
from pipeline.outcomes import SourceItem
from pipeline.preflight import nmi_of
from pipeline.sources import iter_items

RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunPlan:
    """A run's identity and what it reads; `run.json` holds it, so `resume` can rebuild it."""

    run_id: str
    kind: RecordKind
    inputs: tuple[str, ...]
    out_dir: str
    force: bool = False
    parent_run_id: str | None = None
    only: tuple[str, ...] = ()
    corrected: str | None = None
    # path -> (size, mtime_ns) of each input file when the run began; see check_unchanged.
    fingerprints: tuple[tuple[str, int, int], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "kind": self.kind.value,
            "inputs": list(self.inputs),
            "out_dir": self.out_dir,
            "force": self.force,
            "parent_run_id": self.parent_run_id,
            "only": list(self.only),
            "corrected": self.corrected,
            "input_fingerprints": {
                path: {"size": size, "mtime_ns": mtime_ns}
                for path, size, mtime_ns in self.fingerprints
            },
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunPlan:
        return cls(
            run_id=obj["run_id"],
            kind=RecordKind(obj["kind"]),
            inputs=tuple(obj["inputs"]),
            out_dir=obj["out_dir"],
            force=bool(obj.get("force", False)),
            parent_run_id=obj.get("parent_run_id"),
            only=tuple(obj.get("only") or ()),
            corrected=obj.get("corrected"),
            fingerprints=tuple(
                (path, int(stat["size"]), int(stat["mtime_ns"]))
                for path, stat in (obj.get("input_fingerprints") or {}).items()
            ),
        )


def read_run_json(out_dir: Path) -> dict[str, Any] | None:
    """The `run.json` in `out_dir`: the run whose outcome files it holds (None: no run's)."""
    path = out_dir / RUN_JSON
    try:
        found = orjson.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read as a run description: {exc}") from None
    if not isinstance(found, dict) or not isinstance(found.get("run_id"), str):
        raise ConfigError(f"{path} is not the run.json of a wem-der run")
    return found


def absolute(paths: Sequence[str]) -> tuple[str, ...]:
    """Input paths as they must be read again on resume, wherever it is started from."""
    return tuple(p if p == "-" else str(Path(p).resolve()) for p in paths)


def fingerprint(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime_ns) of each input file (standard input has none)."""
    found = []
    for path in paths:
        if path != "-":
            info = os.stat(path)
            found.append((path, info.st_size, info.st_mtime_ns))
    return tuple(found)


def check_unchanged(plan: RunPlan) -> None:
    """Refuse to resume or re-submit from inputs that changed since the run began.

    Records are named by their position in the inputs (their seq), so a changed file would
    make "record 17 is done" point at another record: the wrong ones would be skipped, and
    others sent twice.
    """
    for path, size, mtime_ns in plan.fingerprints:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise InputError(
                f"input {path} of run {plan.run_id} cannot be read: {exc.strerror}"
            ) from None
        if (info.st_size, info.st_mtime_ns) != (size, mtime_ns):
            raise InputError(
                f"input {path} changed since run {plan.run_id} began (size or modification"
                " time differ), so its record numbers no longer name the same records; restore"
                " the file as it was, or send the new file with `wem-der submit` (records"
                " unchanged since their last accepted submission are skipped)"
            )


async def numbered(paths: Sequence[str]) -> AsyncIterator[tuple[int, SourceItem]]:
    seq = 0
    async for item in iter_items(paths):
        yield seq, item
        seq += 1


async def _corrections(path: str) -> dict[str, SourceItem]:
    """Corrected records by NMI; the last one wins when a file names an NMI twice."""
    found: dict[str, SourceItem] = {}
    async for item in iter_items([path]):
        nmi = nmi_of(item.value)
        if nmi is not None:
            found[nmi] = item
    return found


async def plan_items(
    plan: RunPlan,
    ledger: Ledger,
    *,
    on_diff: Callable[[str, list[str]], None],
    on_note: Callable[[str], None] = lambda text: None,
) -> AsyncIterator[tuple[int, SourceItem]]:
    """The numbered items a run sends.

    A re-submission sends the records of its parent run whose outcome is in `plan.only`,
    read again from the parent's inputs under their parent's seq. With `plan.corrected`
    it sends only those of them that the corrected file has a version of (matched by
    NMI), that version, after `on_diff` has shown what changed. An input that no longer
    holds the record the parent sent under a seq is refused, not guessed at.
    """
    if plan.parent_run_id is None:
        async for pair in numbered(plan.inputs):
            yield pair
        return
    chosen = await ledger.item_nmis(plan.parent_run_id, plan.only or None)
    corrected = await _corrections(plan.corrected) if plan.corrected else None
    used: set[str] = set()
    uncorrected = 0
    async for seq, item in numbered(plan.inputs):
        if seq not in chosen:
            continue
        nmi = nmi_of(item.value)
        if nmi != chosen[seq]:
            raise InputError(
                f"{item.source} holds NMI {nmi!r}, but run {plan.parent_run_id} sent NMI"
                f" {chosen[seq]!r} from there: the input changed since that run; re-submit"
                " from a copy of the file as it was, or submit the new file"
            )
        if corrected is None:
            yield seq, item
            continue
        # Corrections are matched by NMI: a record without one has no corrected version.
        if nmi is None or (replacement := corrected.get(nmi)) is None:
            uncorrected += 1
            continue
        used.add(nmi)
        on_diff(nmi, list(field_changes(item.value, replacement.value)))
        yield seq, replacement
    if corrected is None:
        return
    if uncorrected:
        on_note(
            f"{uncorrected} chosen record(s) have no corrected version in {plan.corrected}"
            " and were not sent (re-submit without --with to send them as they were)"
        )
    unmatched = sorted(corrected.keys() - used)
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        on_note(
            f"{len(unmatched)} corrected record(s) match no chosen record of run"
            f" {plan.parent_run_id} (--only {','.join(plan.only)}) and were not sent: {shown}"
        )
