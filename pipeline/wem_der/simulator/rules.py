"""Business rules: the table in `data/rules.toml` and the checks it names.

A first-level rule refuses a request with 422 [doc]; a second-level rule lets it through
and raises an exception on the stored record [doc]. The table (codes, titles, detail
templates, parameters, on/off) is data; each check is a small generator registered here
under the rule's id, yielding the values its template may use. The meanings are simulated:
AEMO does not publish them (see the header of `data/rules.toml`).

Checks run on records that passed the body schema (schema.py), so types are right and
optional fields may be absent or null.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from wem_der.simulator.store import JsonObject

Operation = Literal["installation.create", "installation.update", "nmi.create", "nmi.update"]
Values = dict[str, object]
INSTALLATION_WRITES: tuple[Operation, ...] = ("installation.create", "installation.update")


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What the checks know besides the record."""

    operation: Operation
    exists: bool  # the register already holds a record of this kind for the NMI
    nmi_registered: bool  # the NMI has an NMI record
    today: str  # yyyy-mm-dd in Perth, the WEM's time zone
    require_nmi_first: bool


@dataclass(frozen=True, slots=True)
class Finding:
    """A second-level breach: where it is (None = installation-wide) and its values."""

    connection: int | None
    device: int | None
    attributes: tuple[str, ...]
    values: Values


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table."""

    id: str
    code: str
    title: str
    template: str
    params: Mapping[str, Any]

    def render(self, values: Values) -> str:
        return self.template.format_map(values)


@dataclass(frozen=True, slots=True)
class Breach:
    """A first-level breach, ready for the error envelope."""

    rule_id: str
    error: dict[str, str]


FirstCheck = Callable[[JsonObject, RuleContext, Mapping[str, Any]], Iterator[Values]]
SecondCheck = Callable[[JsonObject, Mapping[str, Any]], Iterator[Finding]]

# rule id -> (operations it applies to, the values it yields, the check)
_FIRST: dict[str, tuple[tuple[Operation, ...], frozenset[str], FirstCheck]] = {}
_SECOND: dict[str, tuple[frozenset[str], SecondCheck]] = {}


def _first(
    rule_id: str, ops: tuple[Operation, ...], *values: str
) -> Callable[[FirstCheck], FirstCheck]:
    def register(check: FirstCheck) -> FirstCheck:
        _FIRST[rule_id] = (ops, frozenset(values), check)
        return check

    return register


def _second(rule_id: str, *values: str) -> Callable[[SecondCheck], SecondCheck]:
    def register(check: SecondCheck) -> SecondCheck:
        _SECOND[rule_id] = (frozenset(values), check)
        return check

    return register


def _connections(record: JsonObject) -> list[JsonObject]:
    return record.get("acConnections") or []


@_first("installation_exists", ("installation.create",), "nmi")
def _installation_exists(
    record: JsonObject, ctx: RuleContext, _: Mapping[str, Any]
) -> Iterator[Values]:
    if ctx.exists:
        yield {"nmi": record["nmi"]}


@_first("nmi_not_registered", ("installation.create",), "nmi")
def _nmi_not_registered(
    record: JsonObject, ctx: RuleContext, _: Mapping[str, Any]
) -> Iterator[Values]:
    if ctx.require_nmi_first and not ctx.nmi_registered:
        yield {"nmi": record["nmi"]}


@_first("nmi_exists", ("nmi.create",), "nmi")
def _nmi_exists(record: JsonObject, ctx: RuleContext, _: Mapping[str, Any]) -> Iterator[Values]:
    if ctx.exists:
        yield {"nmi": record["nmi"]}


@_first("commissioning_date_in_future", INSTALLATION_WRITES, "path", "value", "today")
def _future_date(record: JsonObject, ctx: RuleContext, _: Mapping[str, Any]) -> Iterator[Values]:
    for i, conn in enumerate(_connections(record)):
        value = conn.get("commissioningDate")
        # yyyy-mm-dd strings order as the dates do.
        if value is not None and value > ctx.today:
            path = f"acConnections[{i}].commissioningDate"
            yield {"path": path, "value": value, "today": ctx.today}


@_first("negative_capacity", INSTALLATION_WRITES, "path", "value")
def _negative(record: JsonObject, _: RuleContext, params: Mapping[str, Any]) -> Iterator[Values]:
    for name in params.get("fields", ()):
        value = record.get(name)
        if value is not None and value < 0:
            yield {"path": name, "value": value}


@_first("phases_exceed_available", INSTALLATION_WRITES, "installed", "available")
def _phases(record: JsonObject, _: RuleContext, __: Mapping[str, Any]) -> Iterator[Values]:
    installed = record.get("installedPhasesCount")
    available = record.get("availablePhasesCount")
    if installed is not None and available is not None and installed > available:
        yield {"installed": installed, "available": available}


@_first("connection_without_devices", INSTALLATION_WRITES, "path")
def _no_devices(record: JsonObject, _: RuleContext, __: Mapping[str, Any]) -> Iterator[Values]:
    for i, conn in enumerate(_connections(record)):
        if not conn.get("devices"):
            yield {"path": f"acConnections[{i}].devices"}


@_second("unapproved_inverter", "manufacturerName", "modelNumber")
def _unapproved(record: JsonObject, params: Mapping[str, Any]) -> Iterator[Finding]:
    listed = {
        (e.get("manufacturerName"), e.get("modelNumber")) for e in params.get("unapproved", ())
    }
    prefix = params.get("model_prefix")
    for i, conn in enumerate(_connections(record)):
        details = conn.get("details") or {}
        maker, model = details.get("manufacturerName"), details.get("modelNumber")
        if (maker, model) in listed or (prefix and model and model.startswith(prefix)):
            attributes = tuple(
                f"acConnections[{i}].details.{name}" for name in ("manufacturerName", "modelNumber")
            )
            yield Finding(i, None, attributes, {"manufacturerName": maker, "modelNumber": model})


@_second("export_limit_above_approved", "exportLimitkW", "approvedCapacity")
def _export_limit(record: JsonObject, _: Mapping[str, Any]) -> Iterator[Finding]:
    limit, approved = record.get("exportLimitkW"), record.get("approvedCapacity")
    if limit is not None and approved is not None and limit > approved:
        values: Values = {"exportLimitkW": limit, "approvedCapacity": approved}
        yield Finding(None, None, ("exportLimitkW", "approvedCapacity"), values)


@_second("device_exceeds_connection", "path", "capacity", "connection_capacity")
def _device_capacity(record: JsonObject, _: Mapping[str, Any]) -> Iterator[Finding]:
    for i, conn in enumerate(_connections(record)):
        limit = conn.get("equipmentInjectionCapacity")
        if limit is None:
            continue
        for j, device in enumerate(conn.get("devices") or ()):
            capacity = (device.get("details") or {}).get("nominalRatedCapacity")
            if capacity is not None and capacity > limit:
                path = f"acConnections[{i}].devices[{j}].details.nominalRatedCapacity"
                conn_path = f"acConnections[{i}].equipmentInjectionCapacity"
                values: Values = {"path": path, "capacity": capacity, "connection_capacity": limit}
                yield Finding(i, j, (path, conn_path), values)


def _rule(
    rule_id: str, raw: Mapping[str, Any], title_key: str, template_key: str, known: frozenset[str]
) -> Rule:
    params = {k: v for k, v in raw.items() if k not in ("code", title_key, template_key, "enabled")}
    rule = Rule(rule_id, str(raw["code"]), str(raw[title_key]), str(raw[template_key]), params)
    # Refuse a template naming a value its check never yields at load, not mid-run.
    used = {name for _, name, _, _ in string.Formatter().parse(rule.template) if name}
    if not used <= known:
        raise ValueError(
            f"rule {rule_id}: template uses {sorted(used - known)}; it yields {sorted(known)}"
        )
    return rule


class RuleTable:
    """The enabled rules, with their checks, indexed by operation."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._first: dict[Operation, list[tuple[Rule, FirstCheck]]] = {}
        for rule_id, row in raw.get("first_level", {}).items():
            if rule_id not in _FIRST:
                raise ValueError(f"no first-level check named {rule_id!r}; known: {sorted(_FIRST)}")
            ops, values, check = _FIRST[rule_id]
            rule = _rule(rule_id, row, "title", "detail", values)
            if row.get("enabled", True):
                for op in ops:
                    self._first.setdefault(op, []).append((rule, check))
        self._second: list[tuple[Rule, SecondCheck]] = []
        for rule_id, row in raw.get("second_level", {}).items():
            if rule_id not in _SECOND:
                raise ValueError(
                    f"no second-level check named {rule_id!r}; known: {sorted(_SECOND)}"
                )
            values, second = _SECOND[rule_id]
            rule = _rule(rule_id, row, "name", "details", values)
            if row.get("enabled", True):
                self._second.append((rule, second))

    @classmethod
    def from_file(cls, path: Path | None = None) -> RuleTable:
        """The table in `path`, or the bundled one."""
        if path is None:
            text = (
                resources.files("wem_der.simulator").joinpath("data/rules.toml").read_text("utf-8")
            )
        else:
            text = path.read_text(encoding="utf-8")
        return cls(tomllib.loads(text))

    def breaches(self, record: JsonObject, ctx: RuleContext) -> list[Breach]:
        """Every first-level breach of `record` for the operation in `ctx`."""
        return [
            Breach(rule.id, {"code": rule.code, "title": rule.title, "detail": rule.render(values)})
            for rule, check in self._first.get(ctx.operation, ())
            for values in check(record, ctx, rule.params)
        ]

    def findings(self, record: JsonObject) -> list[tuple[Rule, Finding]]:
        """Every second-level finding on an installation record."""
        return [
            (rule, finding)
            for rule, check in self._second
            for finding in check(record, rule.params)
        ]
