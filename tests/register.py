"""What the simulated register holds, set beside what was sent."""

from __future__ import annotations

from typing import Any

from wem_der.records.shapes import SERVER_FIELDS


def unstamped(value: Any) -> Any:
    """A stored record without what the register adds to it (its server-maintained fields,
    the dates it stamps among them): what was sent, if all is well."""
    if isinstance(value, dict):
        return {k: unstamped(v) for k, v in value.items() if k not in SERVER_FIELDS}
    if isinstance(value, list):
        return [unstamped(v) for v in value]
    return value
