"""Schema validation of request bodies: 400 with code 1020 naming every bad field [doc].

What a body may hold is read from AEMO's operation definitions (`data/*.yml`), not from the
client's record shapes, so that a mistake on either side shows as a refusal instead of
passing both unseen. The definitions give each write's body as an example whose values are
type placeholders ("string", "number", "string:date", "string:date-time"): that fixes every
field's name, nesting and JSON type [spec]. What they leave out (required fields,
server-maintained fields, whole numbers, formats, enumerations) is the simulated register's
table, `data/schema.toml`, checked against the definitions when it is loaded.

    definitions (yml) --example--> _Object / _Array / _Value tree --+
    schema.toml ------------------------------------- checks -------+--> BodySchema
    request body --BodySchema.check()--> the body, or ApiError 400 with one 1020 per field
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from wem_der.simulator.envelope import SCHEMA_CODE, ApiError
from wem_der.simulator.rules import Operation
from wem_der.simulator.store import JsonObject

_TITLE = "Schema validation failed"

# Each write the simulator serves, the file of its API's definitions and the operation
# whose request body defines it [spec].
_OPERATIONS: Mapping[Operation, tuple[str, str]] = {
    "installation.create": (
        "aemo-der-register-installation-v2-openapi.yml",
        "createDERInstallationRecord",
    ),
    "installation.update": (
        "aemo-der-register-installation-v2-openapi.yml",
        "updateDERInstallationRecord",
    ),
    "nmi.create": ("aemo-der-register-nmi-v1-openapi.yml", "createsANewNMIRecord"),
    "nmi.update": ("aemo-der-register-nmi-v1-openapi.yml", "updatesANMIRecord"),
}

# A check of one value: None when it is good, else what is wrong with it.
Check = Callable[[object], str | None]

_JSON_TYPES: Mapping[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
_YMD = re.compile(r"\d{4}-\d{2}-\d{2}")


def _got(expected: str, value: object) -> str:
    return f"expected {expected}, got {_JSON_TYPES.get(type(value), type(value).__name__)}"


def _string(value: object) -> str | None:
    return None if isinstance(value, str) else _got("a string", value)


def _number(value: object) -> str | None:
    # bool is an int to Python, not a number to JSON.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None
    return _got("a number", value)


def _whole_number(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"expected a whole number, 0 or more, got {value!r}"
    return _got("a whole number", value)


def is_date(value: str) -> bool:
    """Whether `value` is a real date written yyyy-mm-dd, as AEMO documents dates [spec]."""
    if not _YMD.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _date(value: object) -> str | None:
    if not isinstance(value, str):
        return _got("a date as yyyy-mm-dd", value)
    return None if is_date(value) else f"expected a real date as yyyy-mm-dd, got {value!r}"


def _date_time(value: object) -> str | None:
    if not isinstance(value, str):
        return _got("a date and time", value)
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"expected an ISO 8601 date and time, got {value!r}"
    return None


# The definitions' type placeholders and what each takes.
_PLACEHOLDERS: Mapping[str, Check] = {
    "string": _string,
    "number": _number,
    "string:date": _date,
    "string:date-time": _date_time,
}


def _one_of(allowed: frozenset[str]) -> Check:
    choices = ", ".join(sorted(allowed))

    def check(value: object) -> str | None:
        return None if value in allowed else f"{value!r} is not one of: {choices}"

    return check


def _matching(pattern: re.Pattern[str]) -> Check:
    def check(value: object) -> str | None:
        if isinstance(value, str) and pattern.fullmatch(value):
            return None
        return f"expected a value matching {pattern.pattern}, got {value!r}"

    return check


@dataclass(frozen=True, slots=True)
class _Value:
    """A leaf: its checks run in order, and the first problem is the field's."""

    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class _Array:
    item: _Node


@dataclass(frozen=True, slots=True)
class _Object:
    fields: Mapping[str, _Node]
    required: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Refused:
    """A field the register maintains: in the definitions, never in a submission."""


_Node = _Object | _Array | _Value | _Refused
_SERVER = _Refused()


class _ApiTable(BaseModel):
    """One API's section of `schema.toml`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    required: frozenset[str] = frozenset()
    server_maintained: frozenset[str] = frozenset()
    kept_on_update: frozenset[str] = frozenset()  # of server_maintained
    whole_numbers: frozenset[str] = frozenset()
    formats: dict[str, str] = {}
    enumerations: dict[str, str] = {}  # field -> the name of a set

    @model_validator(mode="after")
    def _kept_are_maintained(self) -> _ApiTable:
        stray = sorted(self.kept_on_update - self.server_maintained)
        if stray:
            raise ValueError(f"kept_on_update names fields not server_maintained: {stray}")
        return self


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sets: dict[str, frozenset[str]] = {}
    installation: _ApiTable = _ApiTable()
    nmi: _ApiTable = _ApiTable()


class _Builder:
    """Builds one operation's tree from its example, applying its API's table, and
    remembers which names and paths the example has, so the table can be checked."""

    def __init__(self, table: _ApiTable, sets: Mapping[str, frozenset[str]]) -> None:
        self.table = table
        self.formats = {name: re.compile(p) for name, p in table.formats.items()}
        unknown = sorted(set(table.enumerations.values()) - set(sets))
        if unknown:
            raise ValueError(f"enumerations name sets that are not defined: {unknown}")
        self.sets = {name: sets[set_name] for name, set_name in table.enumerations.items()}
        self.names: set[str] = set()
        self.paths: set[str] = set()

    def node(self, example: object, name: str, path: str) -> _Node:
        self.names.add(name)
        self.paths.add(path)
        if name in self.table.server_maintained:
            return _SERVER
        if isinstance(example, dict):
            fields = {
                key: self.node(value, key, f"{path}.{key}" if path else key)
                for key, value in example.items()
            }
            required = frozenset(
                key for key in fields if (f"{path}.{key}" if path else key) in self.table.required
            )
            return _Object(fields, required)
        if isinstance(example, list):
            if len(example) != 1:
                raise ValueError(f"{path}: an array example holds one item, not {len(example)}")
            return _Array(self.node(example[0], name, path))
        return self._value(example, name, path)

    def _value(self, placeholder: object, name: str, path: str) -> _Value:
        if not isinstance(placeholder, str) or placeholder not in _PLACEHOLDERS:
            raise ValueError(f"{path}: unknown type placeholder {placeholder!r}")
        checks = [_PLACEHOLDERS[placeholder]]
        if name in self.table.whole_numbers:
            self._expect(placeholder, "number", path)
            checks = [_whole_number]
        if name in self.sets:
            self._expect(placeholder, "string", path)
            checks.append(_one_of(self.sets[name]))
        if name in self.formats:
            self._expect(placeholder, "string", path)
            checks.append(_matching(self.formats[name]))
        return _Value(tuple(checks))

    @staticmethod
    def _expect(placeholder: str, wanted: str, path: str) -> None:
        if placeholder != wanted:
            raise ValueError(f"{path} is a {placeholder} in the definitions, not a {wanted}")

    def check_table(self) -> None:
        """Refuse a table entry that names nothing in the definitions."""
        named = {
            *self.table.server_maintained,
            *self.table.kept_on_update,
            *self.table.whole_numbers,
            *self.table.formats,
            *self.table.enumerations,
        }
        missing = sorted(named - self.names) + sorted(self.table.required - self.paths)
        if missing:
            raise ValueError(f"the operation definitions have no field {missing}")


def _error(path: str, what: str) -> dict[str, str]:
    return {"code": SCHEMA_CODE, "title": _TITLE, "detail": f"{path or '(request body)'}: {what}"}


def _walk(value: object, node: _Node, path: str, problems: list[tuple[str, str]]) -> None:
    """Every problem of `value` against `node`, added to `problems` as (JSON path, message)."""
    if isinstance(node, _Value):
        for check in node.checks:
            problem = check(value)
            if problem is not None:
                problems.append((path, problem))
                return
    elif isinstance(node, _Array):
        if not isinstance(value, list):
            problems.append((path, _got("an array", value)))
            return
        for i, item in enumerate(value):
            _walk(item, node.item, f"{path}[{i}]", problems)
    elif isinstance(node, _Object):
        if not isinstance(value, dict):
            problems.append((path, _got("a JSON object", value)))
            return
        prefix = f"{path}." if path else ""
        for name in sorted(node.required - value.keys()):
            problems.append((prefix + name, "required field is missing"))
        fields = node.fields
        for name, item in value.items():
            child = fields.get(name)
            if child is None:
                problems.append((prefix + name, "unknown field"))
            elif child is _SERVER:
                problems.append(
                    (prefix + name, "is maintained by the register and cannot be submitted")
                )
            elif item is not None or name in node.required:
                _walk(item, child, prefix + name, problems)


def _definitions(filename: str) -> Any:
    text = resources.files("wem_der.simulator").joinpath(f"data/{filename}").read_text("utf-8")
    # libyaml's loader reads the definitions in a tenth of the pure-Python one's time.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def _request_example(document: Any, operation_id: str) -> object:
    for item in document["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                return operation["requestBody"]["content"]["application/json"]["example"]
    raise ValueError(f"the operation definitions have no operation {operation_id!r}")


@cache
def _examples() -> Mapping[Operation, object]:
    """The request-body example of every write, read once per process."""
    documents = {filename: _definitions(filename) for filename, _ in _OPERATIONS.values()}
    return {
        operation: _request_example(documents[filename], operation_id)
        for operation, (filename, operation_id) in _OPERATIONS.items()
    }


class BodySchema:
    """What the body of each write may hold: the definitions, with a table applied."""

    def __init__(self, roots: Mapping[Operation, _Node]) -> None:
        self._roots = roots

    @classmethod
    def from_toml(cls, text: str) -> BodySchema:
        """The definitions with the table in `text` applied; ValueError if the table names a
        field the definitions lack, or does not fit them."""
        table = _Table.model_validate(tomllib.loads(text))
        roots: dict[Operation, _Node] = {}
        for operation, example in _examples().items():
            api = table.installation if operation.startswith("installation.") else table.nmi
            if operation.endswith(".update"):
                api = api.model_copy(
                    update={"server_maintained": api.server_maintained - api.kept_on_update}
                )
            try:
                builder = _Builder(api, table.sets)
                roots[operation] = builder.node(example, "", "")
                builder.check_table()
            except (ValueError, re.error) as exc:
                raise ValueError(f"schema table, {operation}: {exc}") from None
        return cls(roots)

    @classmethod
    def from_file(cls, path: Path | None = None) -> BodySchema:
        """The table in `path`, or the bundled one."""
        if path is None:
            return _bundled()
        return cls.from_toml(path.read_text(encoding="utf-8"))

    def check(self, operation: Operation, body: object) -> JsonObject:
        """`body` if it is a valid request of `operation`; else ApiError 400, one 1020 per
        problem, each detail `path: what is wrong`."""
        problems: list[tuple[str, str]] = []
        _walk(body, self._roots[operation], "", problems)
        errors = [_error(path, what) for path, what in problems]
        # The root of every write is an object, so a body that is not one has a problem.
        if errors or not isinstance(body, dict):
            raise ApiError(400, errors)
        return body


@cache
def _bundled() -> BodySchema:
    text = resources.files("wem_der.simulator").joinpath("data/schema.toml").read_text("utf-8")
    return BodySchema.from_toml(text)
