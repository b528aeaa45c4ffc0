"""Pre-flight: turn a decoded input item into a record ready to send, or an `invalid` outcome.

Runs before a record costs a request, so a typo or a wrong type is caught locally with
the field's JSON path instead of coming back as a 400. `validate`, a dry run and `submit`
all judge a record here and nowhere else, so they agree on every record: the size of the
request body is checked here too, exactly as the body will be sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from wem_der.records.enumerations import Enumerations
from wem_der.records.outcomes import Outcome, OutcomeRecord, PreparedRecord, SourceItem
from wem_der.records.shapes import RecordKind
from wem_der.records.validation import FieldIssue, validate_record
from wem_der.send.body import (
    MAX_BODY_BYTES,
    BodyTooLarge,
    Compression,
    canonical_json,
    content_hash,
    encode_body,
)
from wem_der.send.routes import request_body


@dataclass(frozen=True)
class Preflight:
    """The validation settings of a run."""

    kind: RecordKind
    allow_unknown: bool = False
    enumerations: Enumerations | None = None
    # How the run compresses its bodies: AEMO's limit is on the body as sent.
    compression: Compression = Compression.GZIP

    def check(self, seq: int, item: SourceItem) -> PreparedRecord | OutcomeRecord:
        """A record ready to send, or the `invalid` outcome that says why it is not."""
        if item.error is not None:
            return invalid(self.kind, item, [FieldIssue("(record)", item.error)])
        wrapper = _wrapper_issue(item.value)
        if wrapper is not None:
            return invalid(self.kind, item, [wrapper])
        result = validate_record(
            item.value, self.kind, allow_unknown=self.allow_unknown, enumerations=self.enumerations
        )
        if isinstance(result, list):
            return invalid(self.kind, item, result)
        # One serialisation serves both the size check and the content hash: the per-record
        # path runs at the quota's rate.
        canonical = canonical_json(result)
        too_large = body_issue(self.kind, result, self.compression, json_bytes=len(canonical))
        if too_large is not None:
            return invalid(self.kind, item, [too_large])
        # Strict validation converts nothing, so the record as decoded is what gets sent,
        # unknown fields included when let through.
        return PreparedRecord(
            seq=seq,
            kind=self.kind,
            nmi=result["nmi"],
            source=item.source,
            payload=result,
            content_hash=content_hash(result, canonical),
        )


def body_issue(
    kind: RecordKind,
    payload: dict[str, Any],
    compression: Compression,
    *,
    json_bytes: int,
) -> FieldIssue | None:
    """Why the request body of `payload` is over AEMO's size limit, if it is.

    Compressing can add a little to bytes it cannot shrink: deflate's worst case is a few
    bytes per block, well under a thousandth. So a body whose JSON is further than that
    under the limit passes on its length alone, and one nearer is encoded as the client
    will encode it, which is then the exact answer. `json_bytes`: the length of the
    record's own JSON (`canonical_json`).
    """
    body = request_body(kind, payload)
    # The wrapper, if the kind has one, adds the same bytes to every record.
    size = json_bytes + len(orjson.dumps(request_body(kind, {}))) - len(b"{}")
    if size + size // 1024 + 64 <= MAX_BODY_BYTES:
        return None
    try:
        encode_body(body, compression, max_bytes=MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        return FieldIssue("(record)", str(exc))
    return None


def _wrapper_issue(value: object) -> FieldIssue | None:
    """A `data` key left after reading: a wrapper with company, or a wrapper wrapped again.

    Reading removes a `{"data": {...}}` wrapper only when `data` is its one key (read/formats.py).
    Neither record kind has a `data` field, so without this the record would be refused as
    "nmi: required field is missing" while its NMI sits plainly inside `data`.
    """
    if not isinstance(value, dict) or "data" not in value:
        return None
    others = sorted(key for key in value if key != "data")
    if others:
        return FieldIssue(
            "data",
            'a record wrapped as {"data": {...}} can have no other keys beside "data"; found '
            + ", ".join(repr(key) for key in others),
        )
    return FieldIssue("data", 'the record is wrapped in "data" twice; wrap it once')


def nmi_of(value: object) -> str | None:
    """The NMI of a record that may be malformed, for the outcome line."""
    if isinstance(value, dict):
        inner = value.get("data")
        if "nmi" not in value and isinstance(inner, dict):
            value = inner  # a wrapper refused by `_wrapper_issue`: its NMI is inside
        nmi = value.get("nmi")
        if isinstance(nmi, str):
            return nmi
    return None


def invalid(kind: RecordKind, item: SourceItem, issues: list[FieldIssue]) -> OutcomeRecord:
    """An `invalid` outcome; each issue becomes an error with the field's path (at least one
    issue is needed: `OutcomeRecord` refuses an invalid outcome that gives no error)."""
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
