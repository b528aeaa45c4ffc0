"""What a run sends: its inputs, numbered, or the chosen records of an earlier run.

Every input record gets a sequence number from its position across the inputs. The
number is stable, so a resumed run, and a re-submission of an earlier one, name the same
record by the same number.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from wem_der.errors import ConfigError, InputError
from wem_der.files.pathtext import from_text, to_text
from wem_der.ledger.store import Ledger
from wem_der.read.sources import STDIN, check_paths, iter_items
from wem_der.records.diff import field_changes
from wem_der.records.outcomes import SourceItem
from wem_der.records.preflight import nmi_of
from wem_der.records.shapes import RecordKind

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
    # (path, size, mtime_ns) of each input file when the run began; see check_inputs.
    fingerprints: tuple[tuple[str, int, int], ...] = ()

    @property
    def unchecked(self) -> tuple[str, ...]:
        """Inputs with no fingerprint (standard input, a pipe, a device): read as they
        stream, so a resume cannot tell whether they still hold the records it numbered."""
        checked = {path for path, _, _ in self.fingerprints}
        return tuple(path for path in self.inputs if path not in checked)

    def as_json(self) -> dict[str, Any]:
        # Paths as `to_text` writes them: a file name need not be UTF-8, and JSON must be.
        fingerprints: dict[str, Any] = dict.fromkeys(map(to_text, self.unchecked))
        fingerprints.update(
            (to_text(path), {"size": size, "mtime_ns": mtime_ns})
            for path, size, mtime_ns in self.fingerprints
        )
        return {
            "run_id": self.run_id,
            "kind": self.kind.value,
            "inputs": [to_text(path) for path in self.inputs],
            "out_dir": to_text(self.out_dir),
            "force": self.force,
            "parent_run_id": self.parent_run_id,
            "only": list(self.only),
            "corrected": None if self.corrected is None else to_text(self.corrected),
            # null: an input that cannot be fingerprinted (see `unchecked`).
            "input_fingerprints": fingerprints,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunPlan:
        corrected = obj.get("corrected")
        return cls(
            run_id=obj["run_id"],
            kind=RecordKind(obj["kind"]),
            inputs=tuple(map(from_text, obj["inputs"])),
            out_dir=from_text(obj["out_dir"]),
            force=bool(obj.get("force", False)),
            parent_run_id=obj.get("parent_run_id"),
            only=tuple(obj.get("only") or ()),
            corrected=None if corrected is None else from_text(corrected),
            fingerprints=tuple(
                (from_text(path), int(found["size"]), int(found["mtime_ns"]))
                for path, found in (obj.get("input_fingerprints") or {}).items()
                if found is not None
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
    """Input paths as they must be read again on resume, wherever it is started from.

    Symbolic links are resolved, unless they lead to nothing a path opens again
    (`/dev/stdin`, a shell's `<(...)` as `/dev/fd/63`, or `/proc/self/fd/0` on a pipe lead
    to `pipe:[N]`) or to a device (`/dev/stdin` on a terminal leads to this session's
    terminal): the name given is then the one a resume opens, made absolute.
    """
    return tuple(p if p == STDIN else _absolute(p) for p in paths)


def _absolute(path: str) -> str:
    resolved = Path(path).resolve()
    try:
        mode = resolved.stat().st_mode
    except OSError:
        return os.path.abspath(path)
    return os.path.abspath(path) if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else str(resolved)


def fingerprint(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime_ns) of each input that is a regular file.

    Standard input, a pipe, a device or a socket has no size or time that says whether it
    still holds the same records: it has none (see `RunPlan.unchecked`).
    """
    found = []
    for path in paths:
        if path == STDIN:
            continue
        try:
            info = os.stat(path)
        except OSError as exc:
            raise InputError(f"cannot read input file {to_text(path)}: {exc.strerror}") from None
        if stat.S_ISREG(info.st_mode):
            found.append((path, info.st_size, info.st_mtime_ns))
    return tuple(found)


def check_inputs(plan: RunPlan) -> None:
    """Refuse to resume or re-submit from inputs that cannot be read again, or that changed
    since the run began.

    Records are named by their position in the inputs (their seq), so a changed file would
    make "record 17 is done" point at another record: the wrong ones would be skipped, and
    others sent twice. An input with no fingerprint (`RunPlan.unchecked`) cannot be
    checked for changes: the run says so as it starts (see `unchecked_notes`).
    """
    for path in plan.unchecked:
        try:
            check_paths([path])
        except InputError as exc:
            raise InputError(
                f"{exc}. Run {plan.run_id} read {to_text(path)} as a stream (standard input, a"
                " pipe or a device): give the same records there again, or send them with"
                " `wem-der submit` (records unchanged since their last accepted submission are"
                " skipped)"
            ) from None
    check_paths(plan.inputs)
    for path, size, mtime_ns in plan.fingerprints:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise InputError(
                f"input {to_text(path)} of run {plan.run_id} cannot be read: {exc.strerror}"
            ) from None
        if (info.st_size, info.st_mtime_ns) != (size, mtime_ns):
            raise InputError(
                f"input {to_text(path)} changed since run {plan.run_id} began (size or modification"
                " time differ), so its record numbers no longer name the same records; restore"
                " the file as it was, or send the new file with `wem-der submit` (records"
                " unchanged since their last accepted submission are skipped)"
            )


def unchecked_notes(plan: RunPlan, *, again: bool) -> list[str]:
    """What a run says of each input it cannot fingerprint; `again`: a resume or a
    re-submission, which reads it a second time."""
    run_id = plan.parent_run_id or plan.run_id
    notes = []
    for path in plan.unchecked:
        name = "standard input" if path == STDIN else to_text(path)
        if again:
            notes.append(
                f"{name} is a stream (standard input, a pipe or a device) that cannot be checked"
                f" for changes: it must give the records it gave run {run_id}, in the same order,"
                " or the wrong ones are skipped"
            )
        else:
            notes.append(
                f"{name} is a stream (standard input, a pipe or a device), read as it comes:"
                " `wem-der resume` cannot check it for changes (it has no size or time to"
                " compare), so a resume must be given the same records again"
            )
    return notes


async def numbered(
    paths: Sequence[str], *, stop: asyncio.Event | None = None
) -> AsyncIterator[tuple[int, SourceItem]]:
    """The items of `paths` with their seq; `stop` as for `iter_items`."""
    seq = 0
    async for item in iter_items(paths, stop=stop):
        yield seq, item
        seq += 1


async def _corrections(path: str, stop: asyncio.Event | None) -> dict[str, SourceItem]:
    """Corrected records by NMI; the last one wins when a file names an NMI twice."""
    found: dict[str, SourceItem] = {}
    async for item in iter_items([path], stop=stop):
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
    stop: asyncio.Event | None = None,
) -> AsyncIterator[tuple[int, SourceItem]]:
    """The numbered items a run sends; once `stop` is set, no stream is waited for.

    A re-submission sends the records of its parent run whose outcome is in `plan.only`
    (`_chosen`). With `plan.corrected` it sends their corrected versions instead
    (`_corrected`).
    """
    items = numbered(plan.inputs, stop=stop)
    if plan.parent_run_id is not None:
        nmis = await ledger.item_nmis(plan.parent_run_id, plan.only or None)
        items = _chosen(items, nmis, parent_run_id=plan.parent_run_id)
        if plan.corrected:
            items = _corrected(
                items,
                await _corrections(plan.corrected, stop),
                on_diff=on_diff,
                on_note=on_note,
                where=plan.corrected,
                chosen_from=f"run {plan.parent_run_id} (--only {','.join(plan.only)})",
            )
    async for pair in items:
        yield pair


async def _chosen(
    items: AsyncIterator[tuple[int, SourceItem]],
    nmis: dict[int, str | None],
    *,
    parent_run_id: str,
) -> AsyncIterator[tuple[int, SourceItem]]:
    """The items whose seq is in `nmis` (seq -> the NMI the parent run sent from there),
    read again from the parent's inputs under their parent's seq.

    An input that no longer holds the record the parent sent under a seq is refused, not
    guessed at. An item that could not be read (a line that no longer decodes, or the
    place where a stream was left at a stop) goes on: it becomes its outcome, with its
    reason, as it would in any run.
    """
    async for seq, item in items:
        if seq not in nmis:
            continue
        if item.error is None and (nmi := nmi_of(item.value)) != nmis[seq]:
            raise InputError(
                f"{item.source} holds NMI {nmi!r}, but run {parent_run_id} sent NMI"
                f" {nmis[seq]!r} from there: the input changed since that run; re-submit"
                " from a copy of the file as it was, or submit the new file"
            )
        yield seq, item


async def _corrected(
    items: AsyncIterator[tuple[int, SourceItem]],
    corrections: dict[str, SourceItem],
    *,
    on_diff: Callable[[str, list[str]], None],
    on_note: Callable[[str], None],
    where: str,
    chosen_from: str,
) -> AsyncIterator[tuple[int, SourceItem]]:
    """For each of `items`, its version in `corrections` (matched by NMI), after `on_diff`
    has shown what changed; the items with none are not sent, and `on_note` says how many,
    and which corrections matched no item.

    `where` names the corrections, `chosen_from` what the items were chosen from.
    """
    used: set[str] = set()
    uncorrected = 0
    async for seq, item in items:
        if item.error is not None:
            # It has no NMI to match a correction by, and no version to send: it goes on
            # to be reported, as `_chosen` lets it.
            yield seq, item
            continue
        nmi = nmi_of(item.value)
        # Corrections are matched by NMI: a record without one has no corrected version.
        if nmi is None or (replacement := corrections.get(nmi)) is None:
            uncorrected += 1
            continue
        used.add(nmi)
        on_diff(nmi, list(field_changes(item.value, replacement.value)))
        yield seq, replacement
    if uncorrected:
        on_note(
            f"{uncorrected} chosen record(s) have no corrected version in {where}"
            " and were not sent (re-submit without --with to send them as they were)"
        )
    unmatched = sorted(corrections.keys() - used)
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        on_note(
            f"{len(unmatched)} corrected record(s) match no chosen record of {chosen_from}"
            f" and were not sent: {shown}"
        )
