"""Field-level differences between two versions of a record, for `resubmit --with`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from wem_der.records.validation import json_path

_MISSING = object()


def field_changes(old: Any, new: Any, loc: tuple[int | str, ...] = ()) -> Iterator[str]:
    """One line per changed leaf: `acConnections[0].count: 2 -> 3`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from field_changes(old.get(key, _MISSING), new.get(key, _MISSING), (*loc, key))
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            a = old[i] if i < len(old) else _MISSING
            b = new[i] if i < len(new) else _MISSING
            yield from field_changes(a, b, (*loc, i))
    elif old != new or type(old) is not type(new):
        yield f"{json_path(loc)}: {_show(old)} -> {_show(new)}"


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    return orjson.dumps(value).decode()
