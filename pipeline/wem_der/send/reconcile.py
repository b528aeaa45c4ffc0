"""Did a request whose answer never arrived land at the register anyway?

A create that timed out or lost its connection may have been stored ("applied then
dropped"). Sending it again would be refused as a duplicate, or worse, so the record is
first read back and compared with what was sent.
"""

from __future__ import annotations

from typing import Any


def register_holds(stored: Any, sent: Any) -> bool:
    """Whether every field that was sent has the same value in the stored record.

    Fields the register adds (server-maintained ones, nulls for fields never given) are
    ignored; list elements are compared by position, as the register keeps their order.
    """
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            key in stored and register_holds(stored[key], value) for key, value in sent.items()
        )
    if isinstance(sent, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(sent)
            and all(register_holds(a, b) for a, b in zip(stored, sent, strict=True))
        )
    if isinstance(sent, bool) or isinstance(stored, bool):
        return sent is stored
    return bool(stored == sent)


def is_conditional(data: Any) -> bool:
    """Whether any connection or device of a stored installation is `Conditional` [doc]."""
    if not isinstance(data, dict):
        return False
    for connection in data.get("acConnections") or []:
        if not isinstance(connection, dict):
            continue
        if connection.get("installationStage") == "Conditional":
            return True
        for device in connection.get("devices") or []:
            if isinstance(device, dict) and device.get("installationStage") == "Conditional":
                return True
    return False
