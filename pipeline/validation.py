"""Validation: a decoded JSON value becomes a record model, or the reasons it cannot.

Validation never raises to the caller: `validate_record` returns the model or a list of
`FieldIssue`, each naming the JSON path of the offending field, so that pre-flight (and
the simulator's schema check) can report every problem of a record at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.enumerations import Enumerations, bundled_enumerations
from pipeline.models import MODELS, SERVER_FIELDS, KeyedRecord, RecordKind, json_type


@dataclass(frozen=True, slots=True)
class FieldIssue:
    """One reason a record failed local validation."""

    path: str
    message: str


def json_path(loc: tuple[int | str, ...]) -> str:
    """`('acConnections', 0, 'details')` -> `acConnections[0].details`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(record)"


def _suggestion(name: str, known: list[str]) -> str:
    by_case = [k for k in known if k.lower() == name.lower()]
    close = by_case or difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown(model: BaseModel, loc: tuple[int | str, ...]) -> Iterator[FieldIssue]:
    known = list(type(model).model_fields)
    for name in model.model_extra or {}:
        path = json_path((*loc, name))
        if name in SERVER_FIELDS:
            yield FieldIssue(path, "is maintained by the register and cannot be submitted")
        else:
            yield FieldIssue(path, f"unknown field{_suggestion(name, known)}")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _unknown(value, (*loc, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _unknown(item, (*loc, name, i))


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return "required field is missing"
    return message


def validate_record(
    obj: object,
    kind: RecordKind,
    *,
    allow_unknown: bool = False,
    enumerations: Enumerations | None = None,
) -> KeyedRecord | list[FieldIssue]:
    """Validate one decoded JSON value as a record of `kind`.

    Unknown fields are refused (with a did-you-mean) unless `allow_unknown`, in which case
    they are kept and sent as given.
    """
    if not isinstance(obj, dict):
        return [FieldIssue("(record)", f"expected a JSON object, got {json_type(obj)}")]
    context = {"enumerations": enumerations or bundled_enumerations()}
    try:
        model = MODELS[kind].model_validate(obj, context=context)
    except ValidationError as exc:
        return [FieldIssue(json_path(e["loc"]), _describe(e)) for e in exc.errors()]
    if not allow_unknown:
        issues = list(_unknown(model, ()))
        if issues:
            return issues
    return model


def record_payload(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a record: exactly the fields that were given."""
    return model.model_dump(mode="json", exclude_unset=True)
