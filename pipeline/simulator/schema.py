"""Schema validation of request bodies: 400 with code 1020 naming every bad field [doc].

The record shapes and their strictness (types, enumerations, unknown and server-maintained
fields refused) are the package's own `validate_record`; this module only unwraps the body
and turns its issues into AEMO's error envelope.
"""

from __future__ import annotations

from pipeline.models import RecordKind
from pipeline.simulator.envelope import SCHEMA_CODE, ApiError
from pipeline.simulator.store import JsonObject
from pipeline.validation import FieldIssue, validate_record

_TITLE = "Schema validation failed"


def _error(issues: list[FieldIssue], prefix: str) -> ApiError:
    errors = []
    for issue in issues:
        if issue.path == "(record)":
            path = prefix or "(request body)"
        else:
            path = f"{prefix}.{issue.path}" if prefix else issue.path
        errors.append({"code": SCHEMA_CODE, "title": _TITLE, "detail": f"{path}: {issue.message}"})
    return ApiError(400, errors)


def installation_from_body(body: object) -> JsonObject:
    """The `data` object of an Installation v2 body, validated; paths read `data.…`."""
    if not isinstance(body, dict):
        raise _error(
            [FieldIssue("(record)", f"expected a JSON object, got {type(body).__name__}")], ""
        )
    issues = [
        FieldIssue(key, "unknown field; the record goes in `data`") for key in body if key != "data"
    ]
    if "data" not in body:
        issues.append(FieldIssue("data", "required field is missing"))
    if issues:
        raise _error(issues, "")
    result = validate_record(body["data"], RecordKind.INSTALLATION)
    if isinstance(result, list):
        raise _error(result, "data")
    return result


def nmi_from_body(body: object) -> JsonObject:
    """The NMI v1 record, which is the body itself (not wrapped in `data`) [spec]."""
    result = validate_record(body, RecordKind.NMI)
    if isinstance(result, list):
        raise _error(result, "")
    return result
