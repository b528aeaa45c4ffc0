"""`/_sim/*`: what tests and benchmarks read to check a client's behaviour.

Not part of AEMO's API: no token, no quota, no faults.
"""

from __future__ import annotations

from aiohttp import web

from wem_der.simulator.envelope import success
from wem_der.simulator.state import STATE


async def stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: counters (see `SimState.snapshot`)."""
    return success(200, **request.app[STATE].snapshot())


async def arrivals(request: web.Request) -> web.Response:
    """GET /_sim/arrivals: the latest requests (see `Arrival`), oldest first, as
    `[at_s, endpoint, status]`; `received` counts every request since the start or the last
    reset, so a reader knows whether the log still holds the first ones."""
    state = request.app[STATE]
    stats = state.stats
    logged = [[a.at_s, a.endpoint, a.status] for a in stats.arrivals]
    return success(200, arrivals=logged, received=sum(stats.by_endpoint.values()))


async def records(request: web.Request) -> web.Response:
    """GET /_sim/records: every current installation (with its exceptions) and NMI record."""
    store = request.app[STATE].store
    installations = [{"data": v.record, "exceptions": v.exceptions} for v in store.installations()]
    return success(200, installations=installations, nmiRecords=list(store.nmis()))


async def reset(request: web.Request) -> web.Response:
    """POST /_sim/reset: forget records, counters and quota history."""
    request.app[STATE].reset()
    return success(200)
