"""The OAuth API v1 token endpoint, quirks included.

`POST /oauth/v1/token?grant_type=client_credentials` with Basic credentials answers
`{"transactionID", "acess_token", "access_token_expires_in": "<lifetime - 1>"}`: the key is
misspelt and the lifetime a string, as AEMO documents [spec]. Failures are flat bodies
(`{"code", "title", "detail", "source"}`), not the DER envelope. The token endpoint is not
under the DER quota. `grant_type` is read from the query, or from a form body, where
OAuth clients usually put it.
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import hdrs, web

from wem_der.simulator.envelope import flat, json_response, transaction_id
from wem_der.simulator.state import STATE
from wem_der.simulator.tokens import credentials_match

GRANT_TYPE = "client_credentials"


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (client_id, secret) if colon else None


async def token(request: web.Request) -> web.Response:
    """Issue a bearer token for valid client credentials."""
    if request.method != hdrs.METH_POST:
        # AEMO's documented 405 detail, placeholders filled [spec].
        detail = f"Input request HTTP method is {request.method}, but operation accepts only [POST]"
        return flat(405, "Method Not Allowed", detail, source="")
    state = request.app[STATE]
    settings = state.settings
    credentials = _basic(request.headers.get(hdrs.AUTHORIZATION, ""))
    if credentials is None or not credentials_match(
        *credentials, expected_id=settings.client_id, expected_secret=settings.client_secret
    ):
        return flat(401, "Unauthorized", "Authorization failed")
    grant = request.query.get("grant_type")
    if grant is None and request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        value = form.get("grant_type")
        grant = value if isinstance(value, str) else None
    if grant != GRANT_TYPE:
        return flat(400, "Bad Request", f"grant_type must be {GRANT_TYPE}")
    issued = state.tokens.issue(state.clock())
    body = {
        "transactionID": transaction_id(),
        "acess_token": issued,
        "access_token_expires_in": str(settings.token_lifetime_s - 1),
    }
    return json_response(200, body)
