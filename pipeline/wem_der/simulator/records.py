"""Server-maintained fields: what the register adds to a record it accepts.

AEMO's responses carry `recordCreationDate` / `recordUpdateDate` (installation, connection,
device and their `details`), `connectionId` / `deviceId` (assigned by the register),
`installationStage` and `recordConfirmedDate` per connection and device [spec]. How a PUT
maps the submitted connections onto the stored ones is undocumented [guess]: here a
connection (or device) that carries the `connectionId` (`deviceId`) of a stored one updates
that one; else one with an `nspConnectionId` (`nspDeviceId`) keeps the ids and creation
date of the stored one with the same value, and one without keeps those of the stored one at
the same position. An id that names no stored connection (device) is replaced by a new one.
A connection or device touched by a second-level finding is "Conditional", every other one
"Confirmed" [doc].
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from wem_der.simulator.rules import Finding, Rule
from wem_der.simulator.store import IdKind, JsonObject, Version

# The WEM runs on Western Australian time, UTC+8 without daylight saving.
PERTH = timezone(timedelta(hours=8), "Australia/Perth")
CONFIRMED = "Confirmed"
CONDITIONAL = "Conditional"


def perth_now() -> datetime:
    """The wall-clock time in Perth (dates are wall-clock, unlike the injected clock)."""
    return datetime.now(UTC).astimezone(PERTH)


def _match(
    item: JsonObject, index: int, previous: list[JsonObject], kind: IdKind, key: str
) -> JsonObject | None:
    carried = item.get(f"{kind}Id")
    if carried is not None:
        found = next((p for p in previous if p[f"{kind}Id"] == carried), None)
        if found is not None:
            return found
    wanted = item.get(key)
    if wanted is not None:
        return next((p for p in previous if p.get(key) == wanted), None)
    return previous[index] if index < len(previous) else None


def _stamp(
    item: JsonObject,
    before: JsonObject | None,
    kind: IdKind,
    next_id: Callable[[IdKind], int],
    *,
    conditional: bool,
    now: str,
) -> None:
    id_key = f"{kind}Id"
    created = before["recordCreationDate"] if before else now
    item[id_key] = before[id_key] if before else next_id(kind)
    item["recordCreationDate"] = created
    item["recordUpdateDate"] = now
    details = item.get("details")
    if details is not None:
        details["recordCreationDate"] = created
        details["recordUpdateDate"] = now
    if conditional:
        item["installationStage"] = CONDITIONAL
        item["recordConfirmedDate"] = None
    else:
        item["installationStage"] = CONFIRMED
        # Keep the date it first became confirmed, if it already was.
        was = before.get("recordConfirmedDate") if before else None
        item["recordConfirmedDate"] = was or now


def stamp_installation(
    record: JsonObject,
    previous: JsonObject | None,
    findings: list[tuple[Rule, Finding]],
    next_id: Callable[[IdKind], int],
    now: str,
) -> Version:
    """Add the server fields to `record` (in place) and build its exceptions."""
    everywhere = any(f.connection is None for _, f in findings)
    connections_hit = {f.connection for _, f in findings if f.device is None}
    devices_hit = {(f.connection, f.device) for _, f in findings if f.device is not None}
    old_connections: list[JsonObject] = (previous or {}).get("acConnections") or []
    for i, conn in enumerate(record.get("acConnections") or ()):
        before = _match(conn, i, old_connections, "connection", "nspConnectionId")
        hit = everywhere or i in connections_hit
        _stamp(conn, before, "connection", next_id, conditional=hit, now=now)
        old_devices: list[JsonObject] = (before or {}).get("devices") or []
        for j, device in enumerate(conn.get("devices") or ()):
            device_before = _match(device, j, old_devices, "device", "nspDeviceId")
            hit = (i, j) in devices_hit
            _stamp(device, device_before, "device", next_id, conditional=hit, now=now)
    record["recordCreationDate"] = previous["recordCreationDate"] if previous else now
    record["recordUpdateDate"] = now
    return Version(record, [_exception(rule, f, record, next_id) for rule, f in findings])


def _exception(
    rule: Rule, finding: Finding, record: JsonObject, next_id: Callable[[IdKind], int]
) -> JsonObject:
    # The NEM register's exception shape [nem]; status "Open" until resolved [guess].
    connection_id = device_id = None
    if finding.connection is not None:
        conn = record["acConnections"][finding.connection]
        connection_id = conn["connectionId"]
        if finding.device is not None:
            device_id = conn["devices"][finding.device]["deviceId"]
    return {
        "exceptionId": next_id("exception"),
        "code": rule.code,
        "name": rule.title,
        "affectedAttributes": list(finding.attributes),
        "details": rule.render(finding.values),
        "status": "Open",
        "deviceId": device_id,
        "connectionId": connection_id,
    }


def stamp_nmi(record: JsonObject, previous: JsonObject | None, now: str) -> JsonObject:
    """Add the record dates to an NMI record (in place)."""
    record["recordCreationDate"] = previous["recordCreationDate"] if previous else now
    record["recordUpdateDate"] = now
    return record


def installation_stage(record: JsonObject) -> str:
    """Conditional if any connection or device is, else Confirmed [spec, search filter]."""
    for conn in record.get("acConnections") or ():
        if conn.get("installationStage") == CONDITIONAL:
            return CONDITIONAL
        for device in conn.get("devices") or ():
            if device.get("installationStage") == CONDITIONAL:
                return CONDITIONAL
    return CONFIRMED


def history_entries(versions: list[Version]) -> list[JsonObject]:
    """Versions as AEMO's history lists them: each with recordStartDate / recordEndDate."""
    out = []
    for k, version in enumerate(versions):
        following = versions[k + 1] if k + 1 < len(versions) else None
        end = following.record["recordUpdateDate"] if following else None
        start = version.record["recordUpdateDate"]
        out.append({**version.record, "recordStartDate": start, "recordEndDate": end})
    return out
