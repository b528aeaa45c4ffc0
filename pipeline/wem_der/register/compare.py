"""Comparing a record with what the register holds: the rules, all of them, in one place.

A source record and the register's current version of its NMI are the same when
submitting the record would change nothing that a client owns:

- Only the fields a client submits count: those of the record shapes (records/shapes.py),
  and any other field the source record itself carries. Server-maintained fields
  (`SERVER_FIELDS`: ids, stages, record dates) and anything else the register adds are
  ignored (docs/aemo-contract.md, "Server-maintained fields").
- Numbers compare by value: `5` equals `5.0`. A boolean is not a number, and strings compare
  exactly.
- An absent field equals null. So, by the same rule, does an object whose every field is
  null or absent, and an empty array: both say "nothing here".
- Connections are matched by `nspConnectionId` and devices by `nspDeviceId`, wherever they
  sit in their array. One that no id matches is matched with the register's at the same
  position, unless both carry an id (then they are two different ones). Other arrays
  (serial numbers) compare element by element, in order.

A difference names the field's JSON path (`acConnections[0].details.modelNumber`, with a
connection or device at its position in the source, or in the register for one only the
register holds), the source's value and the register's, null for absent; a value that is
an object is shown as a client would submit it.

`carry_ids` applies the same matching to an update: the register's `connectionId` and
`deviceId` go onto the matched connections and devices, so that a PUT names the ones it
updates instead of adding new ones. That AEMO matches by them is a guess, so the caller
decides whether to carry them (the `carry_register_ids` setting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, get_type_hints

from wem_der.records.shapes import RECORDS, SERVER_FIELDS, RecordKind
from wem_der.records.validation import json_path, shape_in

# The arrays whose items are matched by an id the client gives them, and the id the
# register gives each in return.
_MATCHED_BY = {"acConnections": "nspConnectionId", "devices": "nspDeviceId"}
# Each level that `carry_ids` descends: the array, its items' client id, their register id.
_CARRIED = (
    ("acConnections", "nspConnectionId", "connectionId"),
    ("devices", "nspDeviceId", "deviceId"),
)


@dataclass(frozen=True, slots=True)
class Difference:
    """One field that differs: where, what the source says, what the register holds."""

    path: str
    source: Any
    register: Any

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "source": self.source, "register": self.register}


@dataclass(frozen=True, slots=True)
class _Node:
    """The fields of one object of a record shape: each to the node of the objects it
    holds (itself, or as the items of an array), or to None for a plain value."""

    fields: Mapping[str, _Node | None]


def _node(shape: type) -> _Node:
    return _Node(
        {
            name: None if (child := shape_in(annotation)) is None else _node(child)
            for name, annotation in get_type_hints(shape).items()
        }
    )


@cache
def _shape(kind: RecordKind) -> _Node:
    """The fields of `kind`'s records, built once."""
    return _node(RECORDS[kind])


def differences(
    source: Mapping[str, Any],
    held: Mapping[str, Any],
    kind: RecordKind = RecordKind.INSTALLATION,
) -> list[Difference]:
    """Where `held`, the register's version, differs from `source`; empty: the same."""
    found: list[Difference] = []
    _object(source, held, _shape(kind), (), found)
    return found


def submitted(record: Mapping[str, Any], kind: RecordKind = RecordKind.INSTALLATION) -> Any:
    """`record` as a client submits it: only the fields of its shape, at every level."""
    return _submitted(record, _shape(kind))


def carry_ids(source: Mapping[str, Any], held: Mapping[str, Any]) -> dict[str, Any]:
    """`source` with the register's `connectionId` and `deviceId` on each connection and
    device matched in `held` (as `differences` matches them); a new dict, `source` as it was."""
    return _carry(source, held, 0)


def _object(
    src: Mapping[str, Any] | None,
    reg: Mapping[str, Any] | None,
    node: _Node,
    loc: tuple[int | str, ...],
    found: list[Difference],
) -> None:
    src, reg = src or {}, reg or {}
    names = [name for name in src if name not in SERVER_FIELDS]
    names += [name for name in reg if name in node.fields and name not in src]
    for name in names:
        _value(src.get(name), reg.get(name), node.fields.get(name), (*loc, name), found)


def _value(
    a: Any, b: Any, node: _Node | None, loc: tuple[int | str, ...], found: list[Difference]
) -> None:
    if node is not None and _either(a, b, list):
        _items(a or [], b or [], node, loc, found)
    elif node is not None and _either(a, b, dict):
        _object(a, b, node, loc, found)
    elif not _same(a, b):
        found.append(Difference(json_path(loc), a, _submitted(b, node)))


def _either(a: Any, b: Any, kind: type) -> bool:
    """Whether `a` and `b` are each a `kind` or null, and not both null."""
    return (
        (a is None or isinstance(a, kind))
        and (b is None or isinstance(b, kind))
        and (a is not None or b is not None)
    )


def _items(
    src: Sequence[Any],
    reg: Sequence[Any],
    node: _Node,
    loc: tuple[int | str, ...],
    found: list[Difference],
) -> None:
    matched, extra = _pairs(src, reg, _MATCHED_BY.get(str(loc[-1])))
    for i, j in matched:
        if j is None:
            found.append(Difference(json_path((*loc, i)), src[i], None))
        else:
            _value(src[i], reg[j], node, (*loc, i), found)
    for j in extra:
        found.append(Difference(json_path((*loc, j)), None, _submitted(reg[j], node)))


def _pairs(
    src: Sequence[Any], reg: Sequence[Any], key: str | None
) -> tuple[list[tuple[int, int | None]], list[int]]:
    """(the register's index of each source item's match, None where the register has
    none, in source order; the register's items that no source item matched)."""
    matched: dict[int, int] = {}
    if key is not None:
        by_id: dict[str, list[int]] = {}
        for j, item in enumerate(reg):
            if (ident := _ident(item, key)) is not None:
                by_id.setdefault(ident, []).append(j)
        for i, item in enumerate(src):
            ident = _ident(item, key)
            candidates = by_id.get(ident, []) if ident is not None else []
            if candidates:
                matched[i] = candidates.pop(0)
    claimed = set(matched.values())
    for i, item in enumerate(src):
        if i in matched or i >= len(reg) or i in claimed:
            continue
        if key is None or _ident(item, key) is None or _ident(reg[i], key) is None:
            matched[i] = i
            claimed.add(i)
    pairs = [(i, matched.get(i)) for i in range(len(src))]
    return pairs, [j for j in range(len(reg)) if j not in claimed]


def _ident(item: Any, key: str) -> str | None:
    """The client's id of an array item, if it has one (a string, as the shapes have it)."""
    ident = item.get(key) if isinstance(item, dict) else None
    return ident if isinstance(ident, str) else None


def _same(a: Any, b: Any) -> bool:
    """Whether two plain values are equal by the rules above."""
    if a is None and isinstance(b, list | dict):
        a = type(b)()
    elif b is None and isinstance(a, list | dict):
        b = type(a)()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_same(a.get(key), b.get(key)) for key in a.keys() | b.keys())
    return type(a) is type(b) and bool(a == b)


def _submitted(value: Any, node: _Node | None) -> Any:
    if node is None:
        return value
    if isinstance(value, list):
        return [_submitted(item, node) for item in value]
    if isinstance(value, dict):
        fields = node.fields
        return {name: _submitted(v, fields[name]) for name, v in value.items() if name in fields}
    return value


def _carry(obj: Mapping[str, Any], held: Mapping[str, Any], level: int) -> dict[str, Any]:
    if level == len(_CARRIED):
        return dict(obj)
    name, key, id_name = _CARRIED[level]
    items, held_items = obj.get(name), held.get(name)
    if not isinstance(items, list) or not isinstance(held_items, list):
        return dict(obj)
    carried = list(items)
    for i, j in _pairs(items, held_items, key)[0]:
        if j is None:
            continue
        item, there = items[i], held_items[j]
        if isinstance(item, dict) and isinstance(there, dict):
            carried[i] = _carry(item, there, level + 1)
            if there.get(id_name) is not None:
                carried[i][id_name] = there[id_name]
    return {**obj, name: carried}
