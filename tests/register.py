"""What the simulated register holds, set beside what was sent."""

from __future__ import annotations

from typing import Any

from pipeline.models import SERVER_FIELDS

# Server-maintained fields, and the dates the register stamps beside them.
STAMPED = SERVER_FIELDS | {"recordCreationDate", "recordUpdateDate", "recordConfirmedDate"}


def unstamped(value: Any) -> Any:
    """A stored record without what the register adds to it: what was sent, if all is well."""
    if isinstance(value, dict):
        return {k: unstamped(v) for k, v in value.items() if k not in STAMPED}
    if isinstance(value, list):
        return [unstamped(v) for v in value]
    return value
