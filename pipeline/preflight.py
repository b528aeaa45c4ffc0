"""Pre-flight: turn a decoded input item into a record ready to send, or an `invalid` outcome.

Runs before a record costs a request, so a typo or a wrong type is caught locally with
the field's JSON path instead of coming back as a 400.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.codec import content_hash
from pipeline.models import Enumerations, FieldIssue, RecordKind, record_payload, validate_record
from pipeline.outcomes import Outcome, OutcomeRecord, PreparedRecord, SourceItem


@dataclass(frozen=True)
class Preflight:
    """The validation settings of a run."""

    kind: RecordKind
    allow_unknown: bool = False
    enumerations: Enumerations | None = None

    def check(self, seq: int, item: SourceItem) -> PreparedRecord | OutcomeRecord:
        """A record ready to send, or the `invalid` outcome that says why it is not."""
        if item.error is not None:
            return invalid(self.kind, item, [FieldIssue("(record)", item.error)])
        result = validate_record(
            item.value, self.kind, allow_unknown=self.allow_unknown, enumerations=self.enumerations
        )
        if isinstance(result, list):
            return invalid(self.kind, item, result)
        payload = record_payload(result)
        return PreparedRecord(
            seq=seq,
            kind=self.kind,
            nmi=result.nmi,
            source=item.source,
            payload=payload,
            content_hash=content_hash(payload),
        )


def nmi_of(value: object) -> str | None:
    """The NMI of a record that may be malformed, for the outcome line."""
    if isinstance(value, dict):
        nmi = value.get("nmi")
        if isinstance(nmi, str):
            return nmi
    return None


def invalid(kind: RecordKind, item: SourceItem, issues: list[FieldIssue]) -> OutcomeRecord:
    """An `invalid` outcome; each issue becomes an error with the field's path."""
    errors = [
        {"code": "local", "title": "Local validation", "path": issue.path, "detail": issue.message}
        for issue in issues
    ]
    reason = "; ".join(f"{issue.path}: {issue.message}" for issue in issues)
    return OutcomeRecord(
        kind=kind,
        nmi=nmi_of(item.value),
        source=item.source,
        outcome=Outcome.INVALID,
        errors=errors,
        reason=reason,
    )
