"""Validation: a decoded JSON value becomes a record model, or the reasons it cannot.

Validation never raises to the caller: `validate_record` returns the model or a list of
`FieldIssue`, each naming the JSON path of the offending field, so that pre-flight (and
the simulator's schema check) can report every problem of a record at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, get_args

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


def _suggestion(name: str, known: Collection[str]) -> str:
    by_case = [k for k in known if k.lower() == name.lower()]
    close = by_case or difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class _Level:
    """The field names one object of a record may carry, and which of them nest objects."""

    known: frozenset[str]
    nested: Mapping[str, _Level]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds (`X | None`, `list[X] | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


@cache
def _level(model: type[BaseModel]) -> _Level:
    nested = {}
    for name, field in model.model_fields.items():
        child = _model_in(field.annotation)
        if child is not None:
            nested[name] = _level(child)
    return _Level(frozenset(model.model_fields), nested)


def _walk(
    obj: Mapping[str, Any],
    level: _Level,
    loc: tuple[int | str, ...],
    enums: Mapping[str, frozenset[str]],
    allow_unknown: bool,
) -> Iterator[FieldIssue]:
    """Unknown fields and enumeration values, in one pass over the decoded record.

    Done on the decoded dict rather than through a validator on every model field: it is
    the record that is sent, and one walk costs a fraction of fifty validator calls.
    """
    for name, value in obj.items():
        if name not in level.known:
            if name in SERVER_FIELDS:
                yield FieldIssue(
                    json_path((*loc, name)), "is maintained by the register and cannot be submitted"
                )
            elif not allow_unknown:
                yield FieldIssue(
                    json_path((*loc, name)), f"unknown field{_suggestion(name, level.known)}"
                )
            continue
        child = level.nested.get(name)
        if child is not None:
            if isinstance(value, dict):
                yield from _walk(value, child, (*loc, name), enums, allow_unknown)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        yield from _walk(item, child, (*loc, name, i), enums, allow_unknown)
        elif isinstance(value, str):
            allowed = enums.get(name)
            if allowed is not None and value not in allowed:
                choices = ", ".join(sorted(allowed))
                yield FieldIssue(json_path((*loc, name)), f"{value!r} is not one of: {choices}")


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "float_type":
        return f"expected a number, got {json_type(error.get('input'))}"
    if error["type"] == "finite_number":
        return "expected a finite number"
    return message


def validate_record(
    obj: object,
    kind: RecordKind,
    *,
    allow_unknown: bool = False,
    enumerations: Enumerations | None = None,
) -> KeyedRecord | list[FieldIssue]:
    """Validate one decoded JSON value as a record of `kind`: every problem at once.

    Types are pydantic's (strict, so a valid record is exactly the decoded value and is
    sent as it is); unknown fields are refused with a did-you-mean unless `allow_unknown`,
    which lets them through to the register. Server-maintained fields are always refused.
    """
    if not isinstance(obj, dict):
        return [FieldIssue("(record)", f"expected a JSON object, got {json_type(obj)}")]
    table = enumerations or bundled_enumerations()
    model_class = MODELS[kind]
    issues = list(_walk(obj, _level(model_class), (), table.for_kind(kind), allow_unknown))
    try:
        model = model_class.model_validate(obj, context={"enumerations": table})
    except ValidationError as exc:
        return [FieldIssue(json_path(e["loc"]), _describe(e)) for e in exc.errors()] + issues
    return issues or model
