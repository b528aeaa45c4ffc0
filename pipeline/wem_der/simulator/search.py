"""`GET /installation?...`: filters and pages over the current installations.

At least one filter is required, `nmi` is a comma-separated list and pageSize is 25, 50 or
100 [spec]. AEMO documents the answer only as a bare list of records, which the simulator
gives with `search_answer = "list"`; the default envelope, with pagination metadata, is
our guess: `{"transactionId", "data": [...], "page", "pageSize", "totalPages",
"totalRecords"}`. Also guessed: an unknown query parameter is a 400 (so a misspelt filter
cannot silently widen a search), a page past the last is empty, results are ordered by
NMI, and filters combine with AND, each matching when any connection (or device) of the
installation matches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wem_der.simulator.envelope import ApiError
from wem_der.simulator.records import installation_stage
from wem_der.simulator.schema import is_date
from wem_der.simulator.store import JsonObject, Store

FILTERS = (
    "nmi",
    "installationStage",
    "equipmentType",
    "deviceType",
    "fromCommissioningDate",
    "toCommissioningDate",
)
PAGE_SIZES = (25, 50, 100)
_STAGES = ("Confirmed", "Conditional")


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed search."""

    nmis: tuple[str, ...] | None
    stage: str | None
    equipment_type: str | None
    device_type: str | None
    from_date: str | None
    to_date: str | None
    page: int
    page_size: int


def _date(name: str, value: str | None) -> str | None:
    if value is None or is_date(value):
        return value
    raise ApiError.one(400, f"{name} must be a date as yyyy-mm-dd, not {value!r}")


def parse_query(params: Mapping[str, str]) -> Query:
    """Check the query string; an `ApiError` 400 says what is wrong."""
    unknown = sorted(set(params) - {*FILTERS, "page", "pageSize"})
    if unknown:
        raise ApiError.one(400, f"Unknown query parameter(s): {', '.join(unknown)}")
    if not any(params.get(name) for name in FILTERS):
        raise ApiError.one(400, f"At least one filter is required: {', '.join(FILTERS)}")
    stage = params.get("installationStage")
    if stage is not None and stage not in _STAGES:
        raise ApiError.one(400, f"installationStage must be one of {', '.join(_STAGES)}")
    page_size = params.get("pageSize", "25")
    if page_size not in {str(n) for n in PAGE_SIZES}:
        raise ApiError.one(400, f"pageSize must be one of 25, 50, 100, not {page_size!r}")
    page = params.get("page", "1")
    if not page.isdigit() or int(page) < 1:
        raise ApiError.one(400, f"page must be a whole number from 1, not {page!r}")
    nmis = params.get("nmi")
    return Query(
        nmis=tuple(n.strip() for n in nmis.split(",") if n.strip()) if nmis else None,
        stage=stage,
        equipment_type=params.get("equipmentType"),
        device_type=params.get("deviceType"),
        from_date=_date("fromCommissioningDate", params.get("fromCommissioningDate")),
        to_date=_date("toCommissioningDate", params.get("toCommissioningDate")),
        page=int(page),
        page_size=int(page_size),
    )


def _matches(record: JsonObject, q: Query) -> bool:
    if q.stage is not None and installation_stage(record) != q.stage:
        return False
    connections = record.get("acConnections") or []
    if q.equipment_type is not None and not any(
        c.get("equipmentType") == q.equipment_type for c in connections
    ):
        return False
    if q.device_type is not None and not any(
        d.get("type") == q.device_type for c in connections for d in c.get("devices") or ()
    ):
        return False
    if q.from_date is None and q.to_date is None:
        return True
    low, high = q.from_date or "0000-00-00", q.to_date or "9999-99-99"
    return any(
        low <= c["commissioningDate"] <= high
        for c in connections
        if c.get("commissioningDate") is not None
    )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search, and where it sits among the pages of all the matches."""

    records: list[JsonObject]
    page: int
    page_size: int
    total_records: int

    def envelope(self) -> dict[str, Any]:
        """The envelope's members besides its transaction id."""
        return {
            "data": self.records,
            "page": self.page,
            "pageSize": self.page_size,
            "totalPages": math.ceil(self.total_records / self.page_size),
            "totalRecords": self.total_records,
        }


def search(store: Store, q: Query) -> Page:
    """The page of matching records asked for."""
    candidates: Iterable[JsonObject]
    if q.nmis is not None:
        found = (store.installation(nmi) for nmi in dict.fromkeys(q.nmis))
        candidates = (v.record for v in found if v is not None)
    else:
        candidates = (v.record for v in store.installations())
    hits = sorted((r for r in candidates if _matches(r, q)), key=lambda r: str(r["nmi"]))
    start = (q.page - 1) * q.page_size
    return Page(hits[start : start + q.page_size], q.page, q.page_size, len(hits))
