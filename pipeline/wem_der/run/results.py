"""What a run and a validation give back: typed values, read by attribute, not by key.

`summary.json` is written from `Summary.as_json()`, so the file, the ledger's copy and
the library's caller see the same figures under the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from wem_der.errors import RunAborted

RunStatus = Literal["finished", "interrupted", "aborted"]
# Figures that summary.json holds only when they say something.
_WHEN_SET = ("abort_reason", "stderr_lost", "register")


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The figures of one run (of its last part, for a resumed run)."""

    run_id: str
    status: RunStatus
    kind: str
    # Input records, each counted once: in one outcome, or not sent.
    records: int
    accepted: int
    conditional: int
    rejected: int
    invalid: int
    failed: int
    skipped: int
    # Records left for `resume` by a stop or an abort: written to failed.jsonl, but not
    # final in the ledger, so not counted in `failed`.
    not_sent: int
    requests: int
    http_429: int
    requests_by_status: Mapping[str, int]
    token_replays: int
    token_refreshes: int
    reconciliations: int
    rate_limit: str
    concurrency: int
    # The fullest window of the quota's period, in requests.
    max_requests_in_window: int
    started_at: str
    elapsed_s: float
    abort_reason: str | None = None
    # What stderr could not write (the log's loss), if anything.
    stderr_lost: str | None = None
    # The embedded simulator's statistics, when the run talked to it.
    register: Mapping[str, Any] | None = None
    # Each time the register was down (send/breaker.py): `start`, `end`, `probes`,
    # `still_down` when the run stopped first, and `cause` when one was diagnosed.
    outages: Sequence[Mapping[str, Any]] = ()

    def as_json(self) -> dict[str, Any]:
        """As `summary.json` holds it."""
        out = asdict(self)
        for name in _WHEN_SET:
            if out[name] is None:
                del out[name]
        return out


@dataclass(frozen=True)
class RunResult:
    """A run's id, outcome directory and summary, and the exit code `wem-der` gives it."""

    run_id: str
    out_dir: Path
    summary: Summary
    # Why the run was aborted, if it was (the library's functions raise it instead).
    aborted: RunAborted | None = field(default=None, compare=False)

    @property
    def exit_code(self) -> int:
        """0 every record accepted, conditional or skipped; 1 any rejected, invalid or
        failed; 3 the run stopped before the end."""
        if self.summary.status != "finished":
            return 3
        return 1 if self.summary.rejected + self.summary.invalid + self.summary.failed else 0


@dataclass(frozen=True)
class ValidationResult:
    """What pre-flight made of the records of some files, sending nothing."""

    records: int
    valid: int
    invalid: int

    @property
    def exit_code(self) -> int:
        """1 if any record is invalid, else 0, as `wem-der validate` exits."""
        return 1 if self.invalid else 0
