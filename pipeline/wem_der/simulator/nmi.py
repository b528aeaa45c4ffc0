"""Handlers of the NMI API v1 (`/wem/v1/der-register/nmi-details...`).

The body is the record itself, not wrapped in `data`; answers are
`{"transactionId", "data": {...}}` [spec]. The gateway middleware has already done the
quota, faults, token and headers.
"""

from __future__ import annotations

from aiohttp import web

from wem_der.simulator.body import read_json
from wem_der.simulator.envelope import ApiError, success
from wem_der.simulator.records import perth_now, stamp_nmi
from wem_der.simulator.rules import Operation, RuleContext
from wem_der.simulator.state import STATE, SimState
from wem_der.simulator.store import JsonObject


def _save(
    state: SimState, record: JsonObject, operation: Operation, previous: JsonObject | None
) -> JsonObject:
    moment = perth_now()
    ctx = RuleContext(
        operation=operation,
        exists=previous is not None,
        nmi_registered=previous is not None,
        today=moment.date().isoformat(),
        require_nmi_first=state.settings.require_nmi_first,
    )
    breaches = state.rules.breaches(record, ctx)
    if breaches:
        raise ApiError(422, [b.error for b in breaches])
    stamp_nmi(record, previous, moment.isoformat(timespec="seconds"))
    state.store.save_nmi(record["nmi"], record)
    return record


async def create(request: web.Request) -> web.Response:
    """POST /nmi-details: a new NMI record."""
    state = request.app[STATE]
    body = await read_json(request, state.settings.max_body_bytes)
    record = state.schema.check("nmi.create", body)
    saved = _save(state, record, "nmi.create", state.store.nmi(record["nmi"]))
    return success(state.settings.create_status, data=saved)


async def update(request: web.Request) -> web.Response:
    """PUT /nmi-details/{nmi}: replace an NMI record."""
    state = request.app[STATE]
    nmi = request.match_info["nmi"]
    body = await read_json(request, state.settings.max_body_bytes)
    record = state.schema.check("nmi.update", body)
    if record["nmi"] != nmi:
        raise ApiError.one(400, f"nmi {record['nmi']!r} does not match the NMI in the path {nmi!r}")
    previous = state.store.nmi(nmi)
    if previous is None:
        raise ApiError.one(404, "ID not found")
    return success(200, data=_save(state, record, "nmi.update", previous))


async def get(request: web.Request) -> web.Response:
    """GET /nmi-details/{nmi}: the stored NMI record."""
    record = request.app[STATE].store.nmi(request.match_info["nmi"])
    if record is None:
        raise ApiError.one(404, "ID not found")
    return success(200, data=record)
