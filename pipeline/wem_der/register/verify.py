"""`verify`: the source against the register, writing nothing to the register.

    items --pre-flight--> batches of NMIs --search, `concurrency` at a time--> compare
          --in input order--> verify.jsonl + differences.csv, then summary.json

Each record ends with one status: `same` (the register holds its content, by the rules of
register/compare.py), `differs` (with its differences), `missing` (the register holds no
installation for its NMI), `invalid` (refused by pre-flight, so not read) or `error` (the
search for its NMI failed for good). A batch of `reader.batch_size` NMIs costs one request
when none is missing from it, so 20,000 records cost about 200.

The files hold NMIs and the register's values, so they are the owner's alone, like the
outcome files (ledger/outcome_files.py), and each line reaches the OS as its record is done.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import orjson

from wem_der.errors import ConfigError, OutputError, own_errors
from wem_der.files.limits import shortage
from wem_der.files.pathtext import to_text
from wem_der.files.private import private_dir
from wem_der.ledger.outcome_files import OutputFiles, csv_cell, csv_rows
from wem_der.records.outcomes import OutcomeRecord, PreparedRecord, SourceItem, SourceRef
from wem_der.records.preflight import Preflight
from wem_der.records.shapes import RecordKind
from wem_der.register.compare import Difference, differences
from wem_der.register.search import Held, Lookup, RegisterReader

VERIFY_JSONL = "verify.jsonl"
DIFFERENCES_CSV = "differences.csv"
# The most records one batch holds, whatever their NMIs (see `_produce`).
MAX_BATCH_ENTRIES = 1000
DIFFERENCE_COLUMNS = (
    "nmi",
    "status",
    "path",
    "source_value",
    "register_value",
    "detail",
    "source_path",
    "source_line",
)


class Status(StrEnum):
    """What the register holds for one source record."""

    SAME = "same"
    DIFFERS = "differs"
    MISSING = "missing"
    INVALID = "invalid"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Verified:
    """One source record checked against the register: one line of verify.jsonl."""

    nmi: str | None
    source: SourceRef
    status: Status
    differences: tuple[Difference, ...] = ()
    reason: str | None = None
    transaction_id: str | None = None  # the search answer's, when it carries one
    read_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "nmi": self.nmi,
            "source": self.source.as_json(),
            "status": self.status.value,
            "differences": [difference.as_json() for difference in self.differences],
            "reason": self.reason,
            "transaction_id": self.transaction_id,
            "read_at": None if self.read_at is None else self.read_at.isoformat(),
        }

    def csv_rows(self) -> list[tuple[str, ...]]:
        """Its rows of differences.csv: one per difference, one saying why for a record
        that is missing, invalid or in error, none for one that is the same."""
        source = (to_text(self.source.path), self.source.line)
        if self.status is Status.SAME:
            return []
        rows: list[tuple[object, ...]]
        if self.status is Status.DIFFERS:
            rows = [(d.path, d.source, d.register, None) for d in self.differences]
        else:
            rows = [(None, None, None, self.reason)]
        return [
            tuple(csv_cell(v) for v in (self.nmi, self.status.value, *row, *source)) for row in rows
        ]


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` found: where its files are, and its summary."""

    out_dir: Path
    summary: dict[str, Any]

    @property
    def all_same(self) -> bool:
        """Whether the register holds every source record as it is."""
        return bool(self.summary["records"] == self.summary[Status.SAME.value])


async def verify(
    items: AsyncIterable[tuple[int, SourceItem]],
    reader: RegisterReader,
    out_dir: Path,
    *,
    preflight: Preflight,
    concurrency: int = 4,
    on_verified: Callable[[Verified], None] = lambda verified: None,
) -> VerifyResult:
    """Check every record of `items` against the register; write the files into `out_dir`.

    Up to `concurrency` batches are read at once, each search granted by the reader's
    quota; the lines are written in input order all the same. `on_verified` sees each record as
    it is written (a progress bar). A misconfigured client raises `Misconfigured`.
    """
    if preflight.kind is not RecordKind.INSTALLATION:
        raise ConfigError(
            "the NMI API has no search, so NMI records cannot be verified in bulk; verify"
            " installation records"
        )
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    started_at, started = datetime.now(UTC), time.monotonic()
    counts: Counter[Status] = Counter()
    # A slot is taken before a batch's search starts and given back once its lines are
    # written: at most `concurrency` batches are held, read or waiting to be written.
    slots = asyncio.Semaphore(concurrency)
    batches: asyncio.Queue[asyncio.Task[list[Verified]] | None] = asyncio.Queue()
    with _Files(out_dir) as files:
        with own_errors():
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    _produce(items, reader, preflight, batches, slots=slots, group=group)
                )
                while (task := await batches.get()) is not None:
                    for verified in await task:
                        files.write(verified)
                        counts[verified.status] += 1
                        on_verified(verified)
                    slots.release()
        counters = reader.counters
        summary: dict[str, Any] = {
            "records": sum(counts.values()),
            **{status.value: counts[status] for status in Status},
            "requests": counters.requests,
            "http_429": counters.http_429,
            "requests_by_status": dict(counters.by_status),
            "token_replays": counters.token_replays,
            "started_at": started_at.isoformat(),
            "elapsed_s": round(time.monotonic() - started, 3),
        }
        files.write_summary(summary)
    return VerifyResult(out_dir, summary)


async def _produce(
    items: AsyncIterable[tuple[int, SourceItem]],
    reader: RegisterReader,
    preflight: Preflight,
    batches: asyncio.Queue[asyncio.Task[list[Verified]] | None],
    *,
    slots: asyncio.Semaphore,
    group: asyncio.TaskGroup,
) -> None:
    """Pre-flight each item and hand on, in input order, batches of up to
    `reader.batch_size` NMIs, each read by a task of its own once a slot is free; None at
    the end. A batch also ends at `MAX_BATCH_ENTRIES` records, so that a run of invalid
    records, or of one NMI, is not held all at once."""
    batch: list[PreparedRecord | Verified] = []
    nmis: set[str] = set()

    async def hand_on() -> None:
        await slots.acquire()
        batches.put_nowait(group.create_task(_verify_batch(batch, nmis, reader)))

    async for seq, item in items:
        entry = _checked(preflight, seq, item)
        new_nmi = isinstance(entry, PreparedRecord) and entry.nmi not in nmis
        if len(batch) >= MAX_BATCH_ENTRIES or (new_nmi and len(nmis) == reader.batch_size):
            await hand_on()
            batch, nmis = [], set()
        batch.append(entry)
        if isinstance(entry, PreparedRecord):
            nmis.add(entry.nmi)
    if batch:
        await hand_on()
    batches.put_nowait(None)


def _checked(preflight: Preflight, seq: int, item: SourceItem) -> PreparedRecord | Verified:
    """The record to look up, or its `invalid` line."""
    checked = preflight.check(seq, item)
    if isinstance(checked, OutcomeRecord):
        return Verified(checked.nmi, checked.source, Status.INVALID, reason=checked.reason)
    if "," in checked.nmi:
        # The search's `nmi` is a comma-separated list: such an NMI cannot be asked for.
        reason = "an NMI holding a comma cannot be searched for"
        return Verified(checked.nmi, checked.source, Status.INVALID, reason=reason)
    return checked


async def _verify_batch(
    batch: list[PreparedRecord | Verified], nmis: set[str], reader: RegisterReader
) -> list[Verified]:
    """The records of `batch` checked against one search for their NMIs."""
    lookup = await reader.lookup(sorted(nmis)) if nmis else Lookup(())
    return [entry if isinstance(entry, Verified) else _verified(entry, lookup) for entry in batch]


def _verified(rec: PreparedRecord, lookup: Lookup) -> Verified:
    if lookup.error is not None:
        reason = f"the register could not be read: {lookup.error}"
        return Verified(rec.nmi, rec.source, Status.ERROR, reason=reason)
    held: Held | None = lookup.held.get(rec.nmi)
    if held is None:
        reason = "the register holds no installation for this NMI"
        return Verified(rec.nmi, rec.source, Status.MISSING, reason=reason)
    found = tuple(differences(rec.payload, held.record, rec.kind))
    return Verified(
        rec.nmi,
        rec.source,
        Status.DIFFERS if found else Status.SAME,
        differences=found,
        transaction_id=held.transaction_id,
        read_at=held.read_at,
    )


class _Files(OutputFiles):
    """verify.jsonl and differences.csv, open for a `with` block, and summary.json."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self._lines = self._rows = -1

    def __enter__(self) -> Self:
        private_dir(self._dir)
        try:
            self._lines = self._open(VERIFY_JSONL)
            self._rows = self._open(DIFFERENCES_CSV)
            self._put(DIFFERENCES_CSV, self._rows, csv_rows([DIFFERENCE_COLUMNS]))
        except BaseException:
            self._close()
            raise
        return self

    def write(self, verified: Verified) -> None:
        self._put(VERIFY_JSONL, self._lines, orjson.dumps(verified.as_json()) + b"\n")
        if rows := verified.csv_rows():
            self._put(DIFFERENCES_CSV, self._rows, csv_rows(rows))

    def _open(self, name: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        try:
            return os.open(self._dir / name, flags, 0o600)
        except OSError as exc:
            raise self._cannot_write(name, exc) from None

    def _cannot_write(self, name: str, exc: OSError) -> OutputError:
        fix = shortage(exc) or "make room or choose another --out, then verify again"
        return OutputError(f"cannot write {self._dir / name}: {exc.strerror or exc}; {fix}")

    def _close(self) -> None:
        for fd in (self._lines, self._rows):
            if fd >= 0:
                os.close(fd)
        self._lines = self._rows = -1
