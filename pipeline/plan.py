"""What a run sends: its inputs, numbered, or the chosen records of an earlier run.

Every input record gets a sequence number from its position across the inputs. The
number is stable, so a resumed run, and a re-submission of an earlier one, name the same
record by the same number.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.diff import field_changes
from pipeline.ledger import Ledger
from pipeline.models import RecordKind
from pipeline.outcomes import SourceItem
from pipeline.preflight import nmi_of
from pipeline.sources import iter_items


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
        )


def absolute(paths: Sequence[str]) -> tuple[str, ...]:
    """Input paths as they must be read again on resume, wherever it is started from."""
    return tuple(p if p == "-" else str(Path(p).resolve()) for p in paths)


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
) -> AsyncIterator[tuple[int, SourceItem]]:
    """The numbered items a run sends."""
    if plan.parent_run_id is None:
        async for pair in numbered(plan.inputs):
            yield pair
        return
    chosen = {
        row.seq for row in await ledger.run_items(plan.parent_run_id, outcomes=plan.only or None)
    }
    corrected = await _corrections(plan.corrected) if plan.corrected else {}
    async for seq, item in numbered(plan.inputs):
        if seq not in chosen:
            continue
        nmi = nmi_of(item.value)
        replacement = corrected.get(nmi) if nmi is not None else None
        if replacement is None:
            yield seq, item
        else:
            on_diff(nmi or "", list(field_changes(item.value, replacement.value)))
            yield seq, replacement
