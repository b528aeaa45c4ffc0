"""Outcome files, written as the run goes.

One JSON line per record in `<outcome>.jsonl`, and for rejected and conditional records one
row per error or exception in `problems.csv`, for operators who work in a spreadsheet.
Each line goes to the OS in one `os.write` on an O_APPEND descriptor before `write` returns,
so a process killed at any moment leaves every finished outcome on disk (the OS writes it
out even if the process dies). The files hold NMIs and AEMO's answers, so the directory is
the owner's alone (0o700, files 0o600). Payloads of records are never written here.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import io
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from wem_der.errors import OutputError
from wem_der.files.limits import shortage
from wem_der.files.pathtext import to_text
from wem_der.files.private import private_dir, write_all, write_json_atomic
from wem_der.records.outcomes import Outcome, OutcomeRecord
from wem_der.report.display import shown

PROBLEMS_CSV = "problems.csv"
SUMMARY_JSON = "summary.json"
PROBLEM_COLUMNS = (
    "nmi",
    "outcome",
    "code",
    "title",
    "detail",
    "transaction_id",
    "source_path",
    "source_line",
)
_WITH_PROBLEMS = frozenset({Outcome.REJECTED, Outcome.CONDITIONAL})
# A spreadsheet runs a cell that starts with one of these as a formula (some read the
# full-width forms as the ASCII ones), and a detail string comes from the far side of an
# API: such a cell is prefixed with a single quote, which the spreadsheet shows as text.
# A cell that starts with a tab, a carriage return or a space is escaped by `shown`, so it
# starts with a quote already.
_FORMULA_STARTS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def outcome_file(outcome: Outcome) -> str:
    """The name of the file that holds the outcomes of class `outcome`."""
    return f"{outcome.value}.jsonl"


class OutputFiles(abc.ABC):
    """Files of one output directory, open for a `with` block: each piece put on disk in
    one write, summary.json written whole. What to do when a file cannot be written is the
    subclass's to say (`_cannot_write`): what is safe depends on what the files are for."""

    def __init__(self, out_dir: Path) -> None:
        self._dir = out_dir

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        try:
            write_json_atomic(self._dir / SUMMARY_JSON, summary)
        except OSError as exc:
            raise self._cannot_write(SUMMARY_JSON, exc) from None

    def _put(self, name: str, fd: int, data: bytes) -> None:
        try:
            write_all(fd, data)
        except OSError as exc:
            raise self._cannot_write(name, exc) from None

    @abc.abstractmethod
    def _cannot_write(self, name: str, exc: OSError) -> OutputError:
        """Why the file `name` cannot be written, and what to do."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Close every file that is open."""


class OutcomeSink(OutputFiles):
    """The outcome files of one output directory, open for the length of a `with` block.

    All six outcome files are created at the start, empty ones included, so an operator
    sees at once that, say, nothing was rejected. With `append` (a resumed run) the files
    are added to rather than emptied.
    """

    def __init__(self, out_dir: Path, *, append: bool = False) -> None:
        super().__init__(out_dir)
        self._append = append
        self._fds: dict[Outcome, int] = {}
        self._problems_fd = -1
        self._counts: Counter[Outcome] = Counter()

    def __enter__(self) -> Self:
        private_dir(self._dir)
        try:
            for outcome in Outcome:
                self._fds[outcome] = self._open(outcome_file(outcome))
            self._problems_fd = self._open(PROBLEMS_CSV)
            # The header goes in once, also when a resumed run adds to an existing file.
            if os.fstat(self._problems_fd).st_size == 0:
                self._put(PROBLEMS_CSV, self._problems_fd, csv_rows([PROBLEM_COLUMNS]))
        except BaseException:
            self._close()
            raise
        return self

    def write(self, outcome: OutcomeRecord) -> bytes:
        """Put one outcome on disk (in the OS's hands) before returning; returns its line,
        for the ledger, which keeps the same line."""
        line = outcome.to_line()
        self.write_line(outcome.outcome, line, outcome)
        return line

    def write_line(
        self, outcome: Outcome, line: bytes, record: OutcomeRecord | None = None
    ) -> None:
        """Put an outcome line as stored (in the ledger) on disk; decoded only when it needs
        a row in problems.csv, so rebuilding the files of a large run stays cheap."""
        if not self._fds:
            raise RuntimeError("OutcomeSink.write called outside its with-block")
        self._put(outcome_file(outcome), self._fds[outcome], line)
        if outcome in _WITH_PROBLEMS:
            record = record or OutcomeRecord.from_json(orjson.loads(line))
            self._put(PROBLEMS_CSV, self._problems_fd, csv_rows(_problem_rows(record)))
        self._counts[outcome] += 1

    def _cannot_write(self, name: str, exc: OSError) -> OutputError:
        # The ledger commits each outcome after its line is written here, so it has all of
        # them but this one, whose write attempt it still holds: resume settles that one.
        fix = shortage(exc) or "make room"
        return OutputError(
            f"cannot write {self._dir / name}: {exc.strerror or exc}. Every outcome so far is"
            f" in the ledger: {fix}, then `wem-der resume {self._dir}` rebuilds the"
            " outcome files and finishes the run"
        )

    @property
    def counts(self) -> dict[str, int]:
        """How many outcomes of each class this sink wrote (zero ones included)."""
        return {outcome.value: self._counts[outcome] for outcome in Outcome}

    def _open(self, name: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        if not self._append:
            flags |= os.O_TRUNC
        try:
            return os.open(self._dir / name, flags, 0o600)
        except OSError as exc:
            fix = shortage(exc) or "check --out"
            raise OutputError(
                f"cannot open {self._dir / name}: {exc.strerror or exc}; {fix}"
            ) from None

    def _close(self) -> None:
        for fd in [*self._fds.values(), self._problems_fd]:
            if fd >= 0:
                os.close(fd)
        self._fds.clear()
        self._problems_fd = -1


@contextlib.contextmanager
def rewriting(out_dir: Path) -> Iterator[OutcomeSink]:
    """A sink whose files, when the block ends without error, replace every outcome file
    and problems.csv of `out_dir`.

    Used when a run resumes, so the files match the ledger exactly. The new files are
    written in a private directory beside the old ones and each then replaces its old
    one atomically, so a reader never sees a half-written file.
    """
    private_dir(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=".rewrite-", dir=out_dir))  # mode 0o700
    try:
        with OutcomeSink(staging) as sink:
            yield sink
        for name in [*map(outcome_file, Outcome), PROBLEMS_CSV]:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _problem_rows(outcome: OutcomeRecord) -> list[tuple[str, ...]]:
    """One row per error and exception; one row from `reason` when AEMO gave none."""
    source = outcome.source
    common = (outcome.transaction_id, to_text(source.path), source.line)
    # AEMO's errors carry {code, title, detail}; its exceptions (NEM shape) carry
    # {code, name, details} (docs/aemo-contract.md, "Error envelope", "Second-level validation").
    problems = [
        (
            item.get("code"),
            item.get("title", item.get("name")),
            item.get("detail", item.get("details")),
        )
        for item in [*outcome.errors, *outcome.exceptions]
    ] or [(None, None, outcome.reason)]
    return [
        tuple(
            csv_cell(value)
            for value in (outcome.nmi, outcome.outcome.value, code, title, detail, *common)
        )
        for code, title, detail in problems
    ]


def csv_cell(value: object) -> str:
    """A CSV cell that neither a terminal (`cat problems.csv`) nor a spreadsheet acts on."""
    if value is None:
        return ""
    text = shown(value if isinstance(value, str) else orjson.dumps(value).decode())
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_rows(rows: Iterable[Iterable[str]]) -> bytes:
    # Rows are built in memory so that a record's rows reach the file in one write.
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode("utf-8")
