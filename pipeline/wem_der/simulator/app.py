"""The aiohttp application: routes, and the gateway every DER request passes through.

A request to the Installation or NMI API goes, in order, through:

    quota (429) -> faults (delay, 429/500/503, drop; an outage's 503 or drop)
        -> routing (404/405) -> bearer token (401) -> participant and market headers (400/403)
        -> handler: body (411/413/415/400) -> schema (400 1020) -> rules (422)
        -> store -> 200/201 with exceptions  [-> dropped after storing, if so drawn]

Every one of those requests is counted by the quota, refused ones included; the OAuth and
`/_sim` endpoints are not. The quota comes first because AEMO's gateway counts what
reaches it, whatever the backend then answers. An OAuth request meets no fault but an
outage window, and that only when the profile says the outage covers the token endpoint.
Every DER and OAuth request is counted by endpoint and status and logged as it arrived
(`SimState.answered`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from wem_der.simulator import installation, introspection, nmi, oauth
from wem_der.simulator.envelope import ApiError, flat, json_response, transaction_id
from wem_der.simulator.faults import Action
from wem_der.simulator.state import STATE, SimState

INSTALLATION_PREFIX = "/v2/der-register"
NMI_PREFIX = "/wem/v1/der-register"
OAUTH_PREFIX = "/oauth/v1"
_DER_PREFIXES = (INSTALLATION_PREFIX + "/", NMI_PREFIX + "/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_OUTAGE_DETAIL = "Service unavailable during an outage (simulated)"


class _Dropped(Exception):
    """The drawn fault is to close the connection without an answer."""


def _too_many(state: SimState) -> web.Response:
    # AEMO documents no body for 429 [spec]; a JSON body with the id costs nothing.
    return json_response(429, {"transactionId": transaction_id()}, state.faults.retry_after())


def _routing_error(request: web.Request, status: int) -> ApiError:
    if status == 405:
        # AEMO's documented 405 detail, placeholders filled [spec].
        return ApiError.one(405, f"Invalid method {request.method} for path {request.path}")
    return ApiError.one(404, f"Resource not found: {request.path}")


def _authorise(state: SimState, request: web.Request, now: float) -> None:
    headers = request.headers
    scheme, _, token = headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer" or not state.tokens.valid(token.strip(), now):
        raise ApiError.one(401, "Authorization failed")
    settings = state.settings
    participant = headers.get("X-initiatingParticipantID")
    if not participant:
        raise ApiError.one(400, "The X-initiatingParticipantID header is required")
    market = headers.get("X-market")
    if not market:
        raise ApiError.one(400, "The X-market header is required")
    if settings.market is not None and market != settings.market:
        raise ApiError.one(400, f"X-market must be {settings.market}, not {market!r}")
    allowed = settings.allowed_participants
    if allowed is not None and participant not in allowed:
        raise ApiError.one(403, "Insufficient privileges")


async def _admitted(
    state: SimState, request: web.Request, handler: Handler, now: float
) -> web.StreamResponse:
    decision = state.faults.decide(now)
    if decision.delay_s > 0:
        await state.sleep(decision.delay_s)
    action = decision.action
    if action is Action.THROTTLE:
        state.stats.throttled_by_fault += 1
        return _too_many(state)
    if action is Action.ERROR_500:
        raise ApiError.one(500, "Internal Server error")
    if action is Action.ERROR_503:
        raise ApiError.one(503, "Service temporarily unavailable (simulated)")
    if action is Action.OUTAGE:
        state.stats.outage_503 += 1
        raise ApiError.one(503, _OUTAGE_DETAIL, headers=state.faults.outage_retry_after())
    if action is Action.OUTAGE_DROP:
        state.stats.outage_dropped += 1
        raise _Dropped
    if action is Action.DROP:
        raise _Dropped
    error = request.match_info.http_exception
    if error is not None:
        raise _routing_error(request, error.status)
    _authorise(state, request, now)
    response = await handler(request)
    if action is Action.APPLY_THEN_DROP:
        state.stats.applied_then_dropped += 1
        raise _Dropped
    return response


def _drop(state: SimState, request: web.Request, endpoint: str, now: float) -> web.Response:
    state.stats.dropped += 1
    state.answered(endpoint, "dropped", now)
    # Closing the transport first makes aiohttp's attempt to send the response below fail
    # quietly as a client disconnection: the client sees the connection close unanswered.
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=503)


async def _der(state: SimState, request: web.Request, handler: Handler) -> web.StreamResponse:
    endpoint = request.match_info.route.name or "unmatched"
    now = state.clock()
    response: web.StreamResponse
    try:
        if state.quota.arrive(now):
            response = await _admitted(state, request, handler, now)
        else:
            response = _too_many(state)
    except ApiError as err:
        response = err.response()
    except _Dropped:
        return _drop(state, request, endpoint, now)
    if response.status == 429:
        state.stats.http_429 += 1
    state.answered(endpoint, str(response.status), now)
    return response


async def _oauth(state: SimState, request: web.Request, handler: Handler) -> web.StreamResponse:
    endpoint = request.match_info.route.name or "unmatched"
    now = state.clock()
    outage = state.faults.outage(now, token=True)
    if outage is Action.OUTAGE_DROP:
        state.stats.outage_dropped += 1
        return _drop(state, request, endpoint, now)
    error = request.match_info.http_exception
    response: web.StreamResponse
    if outage is Action.OUTAGE:
        state.stats.outage_503 += 1
        # The OAuth API's failures are flat bodies [spec], an outage's too.
        headers = state.faults.outage_retry_after()
        response = flat(503, "Service Unavailable", _OUTAGE_DETAIL, headers=headers)
    elif error is not None:
        response = flat(error.status, error.reason, f"Resource not found: {request.path}")
    else:
        response = await handler(request)
    state.answered(endpoint, str(response.status), now)
    return response


@web.middleware
async def gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Route DER requests through the gateway; answer routing errors in AEMO's shapes."""
    state = request.app[STATE]
    path = request.path
    if path.startswith(_DER_PREFIXES):
        return await _der(state, request, handler)
    if path.startswith(OAUTH_PREFIX + "/"):
        return await _oauth(state, request, handler)
    error = request.match_info.http_exception
    if error is not None:
        return _routing_error(request, error.status).response()
    return await handler(request)


def create_app(state: SimState, *, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The application serving the three APIs and `/_sim` from `state`; `middlewares` run
    around the gateway, the first outermost."""
    # The body limit is enforced by `body.read_json` with AEMO's answers; aiohttp's own
    # limit only has to let such a body through.
    app = web.Application(
        middlewares=[*middlewares, gateway], client_max_size=state.settings.max_body_bytes + 1
    )
    app[STATE] = state
    add = app.router.add_route
    inst = INSTALLATION_PREFIX + "/installation"
    nmis = NMI_PREFIX + "/nmi-details"
    add("*", OAUTH_PREFIX + "/token", oauth.token, name="oauth.token")
    add("POST", inst, installation.create, name="installation.create")
    add("GET", inst, installation.find, name="installation.search")
    add("PUT", inst + "/{nmi}", installation.update, name="installation.update")
    add("GET", inst + "/{nmi}", installation.get, name="installation.get")
    add("GET", inst + "/{nmi}/history", installation.history, name="installation.history")
    add("POST", nmis, nmi.create, name="nmi.create")
    add("PUT", nmis + "/{nmi}", nmi.update, name="nmi.update")
    add("GET", nmis + "/{nmi}", nmi.get, name="nmi.get")
    add("GET", "/_sim/stats", introspection.stats, name="sim.stats")
    add("GET", "/_sim/arrivals", introspection.arrivals, name="sim.arrivals")
    add("GET", "/_sim/records", introspection.records, name="sim.records")
    add("POST", "/_sim/reset", introspection.reset, name="sim.reset")
    return app
