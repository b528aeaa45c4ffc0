"""Handlers of the Installation API v2 (`/v2/der-register/installation...`).

The gateway middleware (`app.py`) has already counted the request against the quota,
injected faults and checked the token and headers; these handlers own the body, the
business rules and the store. Success bodies are
`{"transactionId", "data": <stored record>, "exceptions": [...]}`.
"""

from __future__ import annotations

from aiohttp import web

from wem_der.simulator.body import read_json
from wem_der.simulator.envelope import ApiError, json_response, success
from wem_der.simulator.records import history_entries, perth_now, stamp_installation
from wem_der.simulator.rules import Operation, RuleContext
from wem_der.simulator.search import parse_query, search
from wem_der.simulator.state import STATE, SimState
from wem_der.simulator.store import JsonObject, Version


def _not_found() -> ApiError:
    # AEMO's documented detail for an unknown NMI [spec].
    return ApiError.one(404, "ID not found")


def _ok(status: int, version: Version) -> web.Response:
    return success(status, data=version.record, exceptions=version.exceptions)


def apply(
    state: SimState, record: JsonObject, operation: Operation, previous: Version | None
) -> Version:
    """Run the rules on a validated record and store it; 422 if a first-level rule fails.

    What a create or an update does once its body is read; `testing.prefill` uses it to
    fill a register without requests.
    """
    moment = perth_now()
    nmi = record["nmi"]
    store = state.store
    ctx = RuleContext(
        operation=operation,
        exists=previous is not None,
        nmi_registered=store.nmi(nmi) is not None,
        today=moment.date().isoformat(),
        require_nmi_first=state.settings.require_nmi_first,
    )
    breaches = state.rules.breaches(record, ctx)
    if breaches:
        if any(b.rule_id == "installation_exists" for b in breaches):
            state.stats.creates_refused_existing += 1
        raise ApiError(422, [b.error for b in breaches])
    if operation == "installation.create" and previous is not None:
        # Only reachable with the installation_exists rule switched off.
        state.stats.duplicate_creates += 1
        previous = None  # a create starts a fresh record, new ids included
    findings = state.rules.findings(record)
    now = moment.isoformat(timespec="seconds")
    old = previous.record if previous else None
    version = stamp_installation(record, old, findings, store.next_id, now)
    store.save_installation(nmi, version)
    return version


async def create(request: web.Request) -> web.Response:
    """POST /installation: the first installation for an NMI."""
    state = request.app[STATE]
    body = await read_json(request, state.settings.max_body_bytes)
    record = state.schema.check("installation.create", body)["data"]
    previous = state.store.installation(record["nmi"])
    version = apply(state, record, "installation.create", previous)
    return _ok(state.settings.create_status, version)


async def update(request: web.Request) -> web.Response:
    """PUT /installation/{nmi}: the whole record replaces the stored one [guess]."""
    state = request.app[STATE]
    nmi = request.match_info["nmi"]
    body = await read_json(request, state.settings.max_body_bytes)
    record = state.schema.check("installation.update", body)["data"]
    if record["nmi"] != nmi:
        raise ApiError.one(
            400, f"data.nmi {record['nmi']!r} does not match the NMI in the path {nmi!r}"
        )
    previous = state.store.installation(nmi)
    if previous is None:
        raise _not_found()
    return _ok(200, apply(state, record, "installation.update", previous))


async def get(request: web.Request) -> web.Response:
    """GET /installation/{nmi}: the current version."""
    version = request.app[STATE].store.installation(request.match_info["nmi"])
    if version is None:
        raise _not_found()
    return _ok(200, version)


async def history(request: web.Request) -> web.Response:
    """GET /installation/{nmi}/history: every version, oldest first."""
    versions = request.app[STATE].store.history(request.match_info["nmi"])
    if not versions:
        raise _not_found()
    return success(200, data=history_entries(versions))


async def find(request: web.Request) -> web.Response:
    """GET /installation?...: search the current versions (see search.py for the answer)."""
    state = request.app[STATE]
    page = search(state.store, parse_query(request.query))
    if state.settings.search_answer == "list":
        return json_response(200, page.records)
    return success(200, **page.envelope())
