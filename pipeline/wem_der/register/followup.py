"""`followup`: what became of a run's Conditional records, read back from the register.

    ledger --the run's conditional outcomes, each NMI once--> batches of batch_size NMIs
           --search, `concurrency` at a time--> one line per NMI, in the run's order
           --> followup.jsonl (replaced whole), then followup.json

How a Conditional record becomes Confirmed is not published (docs/aemo-contract.md,
"Not known"), so the only way to learn it is to read the record again. The records are the
run's final outcomes as the ledger holds them (where `resume` and `resubmit` find a run's
records too): an NMI the run sent more than once counts by the latest version that the
register stored (accepted or conditional), and is followed up only if that one ended
conditional.

Each line says where the record came from, the run's answer (its transaction id), and
what the register holds now: `stage`, `confirmed`, the JSON paths of the connections and
devices still `Conditional`, and the `exceptions` the record carries. The search's answer
is the record itself [spec], which need not carry a stage of its own: the stage is then
the one the search filters by, Conditional when any connection or device is, Confirmed
when every one is (docs/aemo-contract.md, "Search"), and null when the record does not
say. AEMO documents exceptions only on the answers to writes, so `exceptions` is null,
"not given", unless the record carries an `exceptions` list somewhere; then it holds each
one with the `path` of the part that carries it.

The files hold NMIs and the register's answers, so they are the owner's alone. The lines
are written whole once every NMI is read, so that an interrupted follow-up leaves the
previous one in place rather than half of a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
import structlog

from wem_der.errors import OutputError, own_errors
from wem_der.files.limits import shortage
from wem_der.files.private import private_dir, write_atomic, write_json_atomic
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.records.validation import json_path
from wem_der.register.search import Lookup, RegisterReader

FOLLOWUP_JSONL = "followup.jsonl"
FOLLOWUP_JSON = "followup.json"
CONFIRMED = "Confirmed"
CONDITIONAL = "Conditional"
# The outcomes that stored a version of a record at the register [doc]: the latest of
# them is what the register holds of the run's record.
_STORED = (Outcome.ACCEPTED, Outcome.CONDITIONAL)

log = structlog.get_logger()


class Status(StrEnum):
    """What the register holds now for one of the run's Conditional records."""

    CONDITIONAL = "conditional"  # held, and not (known to be) Confirmed
    CONFIRMED = "confirmed"
    MISSING = "missing"  # the register holds no installation for the NMI
    ERROR = "error"  # its search failed for good


@dataclass(frozen=True, slots=True)
class Conditional:
    """A record of the run that ended conditional: the NMI, its line, the run's answer."""

    nmi: str
    source: SourceRef
    transaction_id: str | None


@dataclass(frozen=True, slots=True)
class FollowedUp:
    """One of the run's Conditional records read again: one line of followup.jsonl."""

    record: Conditional
    run_id: str
    status: Status
    read_at: datetime
    stage: str | None = None
    conditional: tuple[str, ...] = ()
    # None: the register's answer gives none ("not given", which is not "none open").
    exceptions: tuple[dict[str, Any], ...] | None = None
    read_transaction_id: str | None = None  # the search answer's, when it carries one
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "nmi": self.record.nmi,
            "source": self.record.source.as_json(),
            "run_id": self.run_id,
            "transaction_id": self.record.transaction_id,
            "status": self.status.value,
            "stage": self.stage,
            "confirmed": self.status is Status.CONFIRMED,
            "conditional": list(self.conditional),
            "exceptions": None if self.exceptions is None else list(self.exceptions),
            "read_at": self.read_at.isoformat(),
            "read_transaction_id": self.read_transaction_id,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FollowupResult:
    """What `followup` found: where its files are, and its summary (followup.json)."""

    out_dir: Path
    summary: dict[str, Any]

    @property
    def all_read(self) -> bool:
        """Whether every record was read back, whatever its stage: none missing or in error."""
        return not (self.summary[Status.MISSING.value] or self.summary[Status.ERROR.value])

    @property
    def exit_code(self) -> int:
        """0 every record read back; 1 any missing or in error, as `wem-der followup` exits."""
        return 0 if self.all_read else 1


async def conditional_outcomes(ledger: Ledger, run_id: str) -> list[Conditional]:
    """The run's records that ended conditional, each NMI once, in the order of the line
    that decides it: its latest stored version (see the module's docstring)."""
    latest: dict[str, OutcomeRecord] = {}
    async for item in ledger.iter_run_items(run_id, _STORED):
        if item.nmi is None:
            continue
        # Removed first, so that the NMI moves to the place of its latest line.
        latest.pop(item.nmi, None)
        latest[item.nmi] = OutcomeRecord.from_json(orjson.loads(item.line))
    return [
        Conditional(nmi, outcome.source, outcome.transaction_id)
        for nmi, outcome in latest.items()
        if outcome.outcome is Outcome.CONDITIONAL
    ]


async def follow_up(
    records: Sequence[Conditional],
    reader: RegisterReader,
    out_dir: Path,
    *,
    run_id: str,
    concurrency: int = 4,
    on_record: Callable[[FollowedUp], None] = lambda followed: None,
) -> FollowupResult:
    """Read `records` back from the register, `reader.batch_size` NMIs a search and up to
    `concurrency` searches at once, each granted by the reader's quota; write
    followup.jsonl (in the order of `records`) and followup.json into `out_dir`.

    `on_record` sees each record as it is read (a progress bar). A misconfigured client
    raises `Misconfigured`; a file that cannot be written, `OutputError`.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    started_at, started = datetime.now(UTC), time.monotonic()
    counts: Counter[Status] = Counter()
    lines: list[bytes] = []
    batches = list(_batches(records, reader.batch_size))
    for first in range(0, len(batches), concurrency):
        with own_errors():
            async with asyncio.TaskGroup() as group:
                window = [
                    group.create_task(_read(batch, reader, run_id))
                    for batch in batches[first : first + concurrency]
                ]
        for task in window:
            for followed in task.result():
                lines.append(orjson.dumps(followed.as_json()) + b"\n")
                counts[followed.status] += 1
                on_record(followed)
    counters = reader.counters
    summary: dict[str, Any] = {
        "run_id": run_id,
        "records": sum(counts.values()),
        **{status.value: counts[status] for status in Status},
        "requests": counters.requests,
        "http_429": counters.http_429,
        "requests_by_status": dict(counters.by_status),
        "token_replays": counters.token_replays,
        "read_at": started_at.isoformat(),
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    _write(out_dir, b"".join(lines), summary)
    log.info(
        "register.followed_up",
        run_id=run_id,
        **{key: summary[key] for key in ("records", *(s.value for s in Status), "requests")},
    )
    return FollowupResult(out_dir, summary)


def _searchable(nmi: str) -> bool:
    # The search's `nmi` is a comma-separated list: such an NMI cannot be asked for.
    return bool(nmi) and "," not in nmi


def _batches(records: Sequence[Conditional], size: int) -> Iterator[list[Conditional]]:
    """`records` in order, in lists of up to `size` NMIs to search for (and the records
    that cannot be searched for, among them)."""
    batch: list[Conditional] = []
    searched = 0
    for record in records:
        searchable = _searchable(record.nmi)
        if searchable and searched == size:
            yield batch
            batch, searched = [], 0
        batch.append(record)
        searched += searchable
    if batch:
        yield batch


async def _read(batch: list[Conditional], reader: RegisterReader, run_id: str) -> list[FollowedUp]:
    """The records of `batch` read back in one search for their NMIs."""
    nmis = [record.nmi for record in batch if _searchable(record.nmi)]
    lookup = await reader.lookup(nmis) if nmis else Lookup(())
    read_at = datetime.now(UTC)
    return [_followed(record, lookup, run_id, read_at) for record in batch]


def _followed(record: Conditional, lookup: Lookup, run_id: str, read_at: datetime) -> FollowedUp:
    if not _searchable(record.nmi):
        reason = "an NMI that is empty or holds a comma cannot be searched for"
        return FollowedUp(record, run_id, Status.ERROR, read_at, reason=reason)
    if lookup.error is not None:
        reason = f"the register could not be read: {lookup.error}"
        return FollowedUp(record, run_id, Status.ERROR, read_at, reason=reason)
    held = lookup.held.get(record.nmi)
    if held is None:
        reason = "the register holds no installation for this NMI"
        return FollowedUp(record, run_id, Status.MISSING, read_at, reason=reason)
    parts = list(_parts(held.record))
    stage = _stage(held.record, parts)
    return FollowedUp(
        record,
        run_id,
        Status.CONFIRMED if stage == CONFIRMED else Status.CONDITIONAL,
        held.read_at,
        stage=stage,
        conditional=tuple(
            json_path(loc)
            for loc, part in parts[1:]
            if part.get("installationStage") == CONDITIONAL
        ),
        exceptions=_exceptions(parts),
        read_transaction_id=held.transaction_id,
    )


def _parts(record: dict[str, Any]) -> Iterator[tuple[tuple[int | str, ...], dict[str, Any]]]:
    """The record, then each of its connections and their devices, with their JSON path;
    whatever is not an object where one belongs is passed over."""
    yield (), record
    for i, connection in enumerate(_listed(record.get("acConnections"))):
        if not isinstance(connection, dict):
            continue
        yield ("acConnections", i), connection
        for j, device in enumerate(_listed(connection.get("devices"))):
            if isinstance(device, dict):
                yield ("acConnections", i, "devices", j), device


def _listed(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _stage(
    record: dict[str, Any], parts: list[tuple[tuple[int | str, ...], dict[str, Any]]]
) -> str | None:
    """The record's own `installationStage`; else the search's reading of its parts:
    Conditional when any is, Confirmed when every one is; else None (not said)."""
    own = record.get("installationStage")
    if isinstance(own, str):
        return own
    stages = [part.get("installationStage") for _, part in parts[1:]]
    if CONDITIONAL in stages:
        return CONDITIONAL
    if stages and all(stage == CONFIRMED for stage in stages):
        return CONFIRMED
    return None


def _exceptions(
    parts: list[tuple[tuple[int | str, ...], dict[str, Any]]],
) -> tuple[dict[str, Any], ...] | None:
    """Every exception the record's parts carry, each with the `path` of its part; None
    when none of them carries an `exceptions` member at all."""
    found: list[dict[str, Any]] | None = None
    for loc, part in parts:
        given = part.get("exceptions")
        if given is None:
            continue
        found = found if found is not None else []
        path = json_path(loc)
        # The NEM API sometimes sends a single object where a list belongs [nem].
        for item in given if isinstance(given, list) else [given]:
            found.append(
                {**item, "path": path} if isinstance(item, dict) else {"path": path, "value": item}
            )
    return None if found is None else tuple(found)


def _write(out_dir: Path, lines: bytes, summary: dict[str, Any]) -> None:
    """followup.jsonl, then followup.json, each replaced whole (owner-only)."""
    name = FOLLOWUP_JSONL
    try:
        private_dir(out_dir)
        write_atomic(out_dir / name, lines)
        name = FOLLOWUP_JSON
        write_json_atomic(out_dir / name, summary)
    except OSError as exc:
        fix = shortage(exc) or "make room or choose another --out, then follow up again"
        raise OutputError(f"cannot write {out_dir / name}: {exc.strerror or exc}; {fix}") from None
