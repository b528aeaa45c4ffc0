"""Validation: a decoded JSON value is found to be a record, or the reasons it is not one.

Validation never raises to the caller: `validate_record` returns the record or a list of
`FieldIssue`, each naming the JSON path of the offending field, so that pre-flight can
report every problem of a record at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, get_args, get_type_hints

from pydantic import TypeAdapter, ValidationError

# typing's is_typeddict does not know typing_extensions' TypedDict before Python 3.12.
from typing_extensions import is_typeddict

from wem_der.records.enumerations import Enumerations, bundled_enumerations
from wem_der.records.shapes import RECORDS, SERVER_FIELDS, KeyedRecord, RecordKind, json_type

# Built once, at import: pydantic compiles a shape into its core, so checking a record
# then costs no Python call per field (dates and formats excepted).
_ADAPTERS: Mapping[RecordKind, TypeAdapter[KeyedRecord]] = {
    kind: TypeAdapter(shape) for kind, shape in RECORDS.items()
}


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


@dataclass(frozen=True, slots=True)
class _Level:
    """One object of a record, as the walk sees it with an enumerations table applied.

    Each field the object may carry maps to the level of the objects it nests, to its
    allowed values if it is an enumeration, or to None when pydantic's check is all it
    needs; a name not in `fields` is unknown. So the walk costs one lookup per field.
    """

    fields: Mapping[str, _Level | frozenset[str] | None]


def shape_in(annotation: Any) -> type | None:
    """The shape an annotation holds (`X | None`, `list[X] | None`), if any."""
    if isinstance(annotation, type) and is_typeddict(annotation):
        return annotation
    for arg in get_args(annotation):
        found = shape_in(arg)
        if found is not None:
            return found
    return None


def _level(shape: type, enums: Mapping[str, frozenset[str]]) -> _Level:
    """The level of `shape`, and of the shapes it nests, with the enumerations applied."""
    fields: dict[str, _Level | frozenset[str] | None] = {}
    for name, annotation in get_type_hints(shape).items():
        child = shape_in(annotation)
        fields[name] = enums.get(name) if child is None else _level(child, enums)
    return _Level(fields)


# A run has one table, a test a few: a small bound keeps the levels of tables gone by from
# piling up, and the table's identity is its key (records/enumerations.py).
@lru_cache(maxsize=16)
def _levels_of(table: Enumerations, kind: RecordKind) -> _Level:
    """The top level of `kind` with `table` applied; built once per table, not per record."""
    return _level(RECORDS[kind], table.for_kind(kind))


# What a level gives for a name it does not know (None is a known field with no values).
_UNKNOWN = object()


def _walk(
    obj: Mapping[str, Any],
    level: _Level,
    loc: tuple[int | str, ...],
    allow_unknown: bool,
    issues: list[FieldIssue],
) -> None:
    """Unknown fields and enumeration values, in one pass over the decoded record.

    Done on the decoded dict rather than through a validator on every field: it is the
    record that is sent, and one walk costs a fraction of fifty validator calls.
    """
    fields = level.fields
    for name, value in obj.items():
        check = fields.get(name, _UNKNOWN)
        if check is None:
            continue
        if isinstance(check, frozenset):
            if isinstance(value, str) and value not in check:
                choices = ", ".join(sorted(check))
                issues.append(
                    FieldIssue(json_path((*loc, name)), f"{value!r} is not one of: {choices}")
                )
        elif isinstance(check, _Level):
            if isinstance(value, dict):
                _walk(value, check, (*loc, name), allow_unknown, issues)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        _walk(item, check, (*loc, name, i), allow_unknown, issues)
        elif name in SERVER_FIELDS:
            issues.append(
                FieldIssue(
                    json_path((*loc, name)), "is maintained by the register and cannot be submitted"
                )
            )
        elif not allow_unknown:
            issues.append(
                FieldIssue(json_path((*loc, name)), f"unknown field{_suggestion(name, fields)}")
            )


# pydantic's type errors, said in JSON's terms like the rest of the messages.
_EXPECTED = {
    "string_type": "a string",
    "float_type": "a number",
    "int_type": "a whole number",  # strict shapes: a float in an int field is this too
    "list_type": "an array",
    "dict_type": "an object",
}


def _got(value: object) -> str:
    # A fraction where a whole number belongs is shown: "got number" would not say why.
    return repr(value) if isinstance(value, float) else json_type(value)


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind in _EXPECTED:
        value = error.get("input")
        if kind == "int_type" and isinstance(value, float) and value.is_integer():
            # 1.0 is whole, but is sent as written: the register reads a decimal there.
            # Only where a whole number belongs: in a string field 1.0 is just not a string.
            return f"expected a whole number without a decimal point, got {value!r}"
        return f"expected {_EXPECTED[kind]}, got {_got(value)}"
    if kind == "finite_number":
        return "expected a finite number"
    if kind == "greater_than_equal":
        return f"expected {error['ctx']['ge']} or more, got {error.get('input')!r}"
    return str(error["msg"]).removeprefix("Value error, ")


def validate_record(
    obj: object,
    kind: RecordKind,
    *,
    allow_unknown: bool = False,
    enumerations: Enumerations | None = None,
) -> dict[str, Any] | list[FieldIssue]:
    """Validate one decoded JSON value as a record of `kind`: every problem at once.

    Types are pydantic's, against the shapes of records/shapes.py, and strict: they convert
    nothing, so a valid record is returned as it is, the decoded dict that gets sent.
    Unknown fields are refused with a did-you-mean unless `allow_unknown`, which lets them
    through to the register. Server-maintained fields are always refused.
    """
    if not isinstance(obj, dict):
        return [FieldIssue("(record)", f"expected a JSON object, got {json_type(obj)}")]
    table = enumerations or bundled_enumerations()
    top = _levels_of(table, kind)
    issues: list[FieldIssue] = []
    _walk(obj, top, (), allow_unknown, issues)
    try:
        _ADAPTERS[kind].validate_python(obj, context=table.formats)
    except ValidationError as exc:
        return [FieldIssue(json_path(e["loc"]), _describe(e)) for e in exc.errors()] + issues
    return issues or obj
