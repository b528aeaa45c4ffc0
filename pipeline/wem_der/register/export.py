"""`export`: what the register holds, as records that `submit` takes back.

    no filter   --matching(stage) for each installationStage--+
    filters     --matching(filters)---------------------------+--> each NMI once
    NMIs        --lookup(), a batch at a time-----------------+      --> submitted(record)
        --> one JSON line each, to FILE.jsonl, FILE.jsonl.gz or a stream

The search needs a filter (docs/aemo-contract.md, "Search") and every installation is in
one of the two stages, so with none given each stage is read in turn. A record that moves
between pages while they are read (a change elsewhere shifts the order) can come twice, or
come in both stages: the NMIs written are remembered, so each is written once. One that
moves onto a page already read is not seen by this export; the next one sees it.

Each line is the record as a client submits it (`compare.submitted`): server-maintained
fields and anything else outside the record shapes are left out, so the file is valid input
to `submit`, and submitting it unchanged, with the plan read from the register, sends no
write. A file is written beside its final name, owner-only like every file the tool writes,
and renamed into place once complete, so a failed export leaves no half file that looks whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import orjson

from wem_der.errors import OutputError, SearchFailed
from wem_der.files.limits import shortage
from wem_der.files.private import private_dir
from wem_der.register.compare import submitted
from wem_der.register.search import STAGES, Filters, Held, RegisterReader


class _Stream(Protocol):
    """Where the lines go: a file, its gzip, or the stream given."""

    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class ExportResult:
    """How many installations an export wrote, and the requests it took."""

    records: int
    requests: int


async def export(
    reader: RegisterReader,
    filters: Filters,
    out: Path | BinaryIO,
    *,
    nmis: Iterable[str] | None = None,
    on_record: Callable[[Held], None] = lambda held: None,
) -> ExportResult:
    """Write every installation that `filters` select (and, with `nmis`, only those NMIs)
    to `out`: a path (`.gz` at the end: gzip), or an open binary stream such as standard
    output, written as it is read. `on_record` sees each one written (a progress bar).

    Raises `SearchFailed` when a search cannot be read, `OutputError` when `out` cannot
    be written; a path is then left as it was.
    """
    seen: set[str] = set()
    requests_before = reader.counters.requests
    with _opened(out) as stream:
        async for held in _read(reader, filters, nmis):
            if held.nmi in seen:
                continue
            seen.add(held.nmi)
            line = orjson.dumps(submitted(held.record)) + b"\n"
            try:
                stream.write(line)
            except OSError as exc:
                raise _cannot_write(out, exc) from None
            on_record(held)
    return ExportResult(len(seen), reader.counters.requests - requests_before)


async def _read(
    reader: RegisterReader, filters: Filters, nmis: Iterable[str] | None
) -> AsyncIterator[Held]:
    """What the export writes, in the order read, NMIs possibly more than once."""
    if nmis is not None:
        for batch in _batches(nmis, reader.batch_size):
            lookup = await reader.lookup(batch, filters)
            if lookup.error is not None:
                raise SearchFailed(
                    f"the register's search for {len(batch)} NMIs, {batch[0]} first, failed:"
                    f" {lookup.error}; nothing was written for it: run the export again later"
                )
            for nmi in batch:
                if (held := lookup.held.get(nmi)) is not None:
                    yield held
        return
    if filters.query():
        queries = [filters]
    else:
        queries = [dataclasses.replace(filters, installation_stage=stage) for stage in STAGES]
    for query in queries:
        async for held in reader.matching(query):
            yield held


def _batches(nmis: Iterable[str], size: int) -> Iterator[list[str]]:
    """`nmis` in lists of up to `size` different NMIs, each NMI in one list only."""
    batch: list[str] = []
    seen: set[str] = set()
    for nmi in nmis:
        if nmi in seen:
            continue
        seen.add(nmi)
        batch.append(nmi)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def _opened(out: Path | BinaryIO) -> Iterator[_Stream]:
    """A stream to write the export to; a path's file is in place only once it is whole."""
    if not isinstance(out, Path):
        yield out
        try:
            out.flush()
        except OSError as exc:
            raise _cannot_write(out, exc) from None
        return
    try:
        private_dir(out.parent)
        fd, temp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise _cannot_write(out, exc) from None
    try:
        with os.fdopen(fd, "wb") as raw:
            if out.name.endswith(".gz"):
                # The name in the gzip header is the final one, not the temporary file's.
                inner = out.name.removesuffix(".gz")
                with gzip.GzipFile(inner, "wb", fileobj=raw, mtime=0) as packed:
                    yield packed
            else:
                yield raw
            raw.flush()
            os.fsync(raw.fileno())  # the bytes are on disk before the name points at them
        os.replace(temp, out)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise _cannot_write(out, exc) from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _cannot_write(out: Path | BinaryIO, exc: OSError) -> OutputError:
    where = out if isinstance(out, Path) else "the output stream"
    fix = shortage(exc) or "make room or choose another --out, then export again"
    return OutputError(f"cannot write {where}: {exc.strerror or exc}; {fix}")
