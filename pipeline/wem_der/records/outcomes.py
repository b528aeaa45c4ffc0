"""Value objects that flow through the pipeline: where a record came from, and what became of it.

Expected answers from the API are values here, not exceptions: every input record ends as
exactly one `OutcomeRecord`, written to the file named after its `Outcome`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from wem_der.files.pathtext import from_text, to_text
from wem_der.records.shapes import RecordKind


class Outcome(StrEnum):
    """The final class of a record; each has its own outcome file."""

    ACCEPTED = "accepted"
    CONDITIONAL = "conditional"
    REJECTED = "rejected"
    INVALID = "invalid"
    FAILED = "failed"
    SKIPPED = "skipped"


class Action(StrEnum):
    """What the operator asked for (`--action`), and what a request actually did."""

    CREATE = "create"
    UPDATE = "update"
    UPSERT = "upsert"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from: a path (or `-`) and its 1-based line, or its array index."""

    path: str
    line: int | None = None
    index: int | None = None

    def as_json(self) -> dict[str, Any]:
        # A file name need not be UTF-8 (nor printable); JSON must be: see pathtext.
        out: dict[str, Any] = {"path": to_text(self.path)}
        if self.line is not None:
            out["line"] = self.line
        if self.index is not None:
            out["index"] = self.index
        return out

    def __str__(self) -> str:
        path = to_text(self.path)
        if self.index is not None:
            return f"{path}[{self.index}]"
        return f"{path}:{self.line}" if self.line is not None else path


class SourceItem:
    """One JSON value from an input, or the reason it could not be decoded.

    Decoding may be deferred (`deferred`) until `value` or `error` is first read: a resumed
    run passes over the records it finished without paying to decode them, which over a
    migration of a million records is most of the time a resume takes.
    """

    __slots__ = ("_decode", "_error", "_value", "source")

    def __init__(self, source: SourceRef, value: object = None, error: str | None = None) -> None:
        self.source = source
        self._value = value
        self._error = error
        self._decode: Callable[[], tuple[object, str | None]] | None = None

    @classmethod
    def deferred(
        cls, source: SourceRef, decode: Callable[[], tuple[object, str | None]]
    ) -> SourceItem:
        item = cls(source)
        item._decode = decode
        return item

    def _resolve(self) -> None:
        if self._decode is not None:
            self._value, self._error = self._decode()
            self._decode = None

    @property
    def value(self) -> object:
        self._resolve()
        return self._value

    @property
    def error(self) -> str | None:
        self._resolve()
        return self._error

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceItem):
            return NotImplemented
        return (self.source, self.value, self.error) == (other.source, other.value, other.error)

    __hash__ = None  # type: ignore[assignment]  # mutable once decoded, like a dict

    def __repr__(self) -> str:
        return f"SourceItem(source={self.source!r}, value={self.value!r}, error={self.error!r})"


@dataclass(slots=True)
class PreparedRecord:
    """A record that passed pre-flight: ready to be sent, with the hash of its content.

    `seq` is the record's ordinal in the run's input (stable across a resume), and
    `exists` what was known of the NMI at the register when the record was dispatched
    (None: unknown). The engine fills `exists` in, in place: it alone holds the record
    then, and a copy per record would cost more than the lookup that feeds it.
    """

    seq: int
    kind: RecordKind
    nmi: str
    source: SourceRef
    payload: dict[str, Any]
    content_hash: str
    exists: bool | None = None

    def skipped(
        self,
        reason: str,
        *,
        transaction_id: str | None = None,
        previous_run_id: str | None = None,
        previous_transaction_id: str | None = None,
    ) -> OutcomeRecord:
        """This record's outcome when it is not sent, and why; `transaction_id` that of
        the read that showed it need not be, the `previous_` ones the run that sent it."""
        return OutcomeRecord(
            self.kind,
            self.nmi,
            self.source,
            Outcome.SKIPPED,
            transaction_id=transaction_id,
            reason=reason,
            content_hash=self.content_hash,
            previous_run_id=previous_run_id,
            previous_transaction_id=previous_transaction_id,
        )


@dataclass(slots=True)
class OutcomeRecord:
    """What became of one input record; one JSON line in the outcome file of `outcome`."""

    kind: RecordKind
    nmi: str | None
    source: SourceRef
    outcome: Outcome
    action: Action | None = None
    http_status: int | None = None
    transaction_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    reason: str | None = None
    latency_ms: float | None = None
    content_hash: str | None = None
    run_id: str | None = None
    # Re-submissions and skips point back at the run whose answer they rely on.
    previous_run_id: str | None = None
    previous_transaction_id: str | None = None

    def __post_init__(self) -> None:
        # An invalid record was never sent, so its errors are the only account of what is
        # wrong with it: problems.csv, the report and the operator all read them.
        if self.outcome is Outcome.INVALID and not self.errors:
            raise ValueError(
                f"an invalid outcome must carry at least one error saying why ({self.source})"
            )

    def as_json(self) -> dict[str, Any]:
        return {
            "nmi": self.nmi,
            "kind": self.kind.value,
            "source": self.source.as_json(),
            "outcome": self.outcome.value,
            "action": self.action.value if self.action else None,
            "http_status": self.http_status,
            "transaction_id": self.transaction_id,
            "errors": self.errors,
            "exceptions": self.exceptions,
            "attempts": self.attempts,
            "reason": self.reason,
            "latency_ms": self.latency_ms,
            "content_hash": self.content_hash,
            "run_id": self.run_id,
            "previous_run_id": self.previous_run_id,
            "previous_transaction_id": self.previous_transaction_id,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> OutcomeRecord:
        """The inverse of `as_json`, for outcome lines read back from the ledger."""
        source = obj["source"]
        return cls(
            kind=RecordKind(obj["kind"]),
            nmi=obj.get("nmi"),
            source=SourceRef(from_text(source["path"]), source.get("line"), source.get("index")),
            outcome=Outcome(obj["outcome"]),
            action=Action(obj["action"]) if obj.get("action") else None,
            http_status=obj.get("http_status"),
            transaction_id=obj.get("transaction_id"),
            errors=obj.get("errors") or [],
            exceptions=obj.get("exceptions") or [],
            attempts=obj.get("attempts", 0),
            reason=obj.get("reason"),
            latency_ms=obj.get("latency_ms"),
            content_hash=obj.get("content_hash"),
            run_id=obj.get("run_id"),
            previous_run_id=obj.get("previous_run_id"),
            previous_transaction_id=obj.get("previous_transaction_id"),
        )

    def to_line(self) -> bytes:
        return orjson.dumps(self.as_json()) + b"\n"
