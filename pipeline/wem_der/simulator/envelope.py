"""Response bodies in AEMO's shapes, and the exception that carries an error answer.

DER APIs answer `{"transactionId", "data", ...}` on success and
`{"transactionId", "errors": [{"code", "title", "detail"}]}` on failure [spec]; codes are
strings (`"400"`, `"1020"`). The OAuth API answers flat bodies instead
(`{"code": 401, "title", "detail", "source"}`) and spells its id `transactionID` [spec].
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

# Titles as AEMO's operation definitions spell them ("Unauthorised", "Not found") [spec].
TITLES = {
    400: "Bad Request",
    401: "Unauthorised",
    403: "Forbidden",
    404: "Not found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too many requests",
    500: "Internal Server error",
    503: "Service Unavailable",
}

# AEMO's code for a request that fails JSON-schema validation [doc].
SCHEMA_CODE = "1020"


def transaction_id() -> str:
    """A fresh id for one call, as AEMO returns with every answer [doc]."""
    return str(uuid.uuid4())


def json_response(
    status: int,
    body: Mapping[str, Any] | list[Any],
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An application/json response serialised with orjson (a list: a search's bare answer)."""
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def success(status: int, **fields: Any) -> web.Response:
    """A DER success body: a new transaction id, then `fields` (`data`, `exceptions`, ...)."""
    return json_response(status, {"transactionId": transaction_id(), **fields})


def flat(
    status: int,
    title: str,
    detail: str,
    *,
    source: str = "API Gateway",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The OAuth API's flat error body."""
    body = {"code": status, "title": title, "detail": detail, "source": source}
    return json_response(status, body, headers)


class ApiError(Exception):
    """An error answer in the DER envelope, raised by handlers and turned into a response."""

    def __init__(
        self,
        status: int,
        errors: list[dict[str, str]],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors
        self.headers = headers

    @classmethod
    def one(
        cls,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ApiError:
        """An error with a single entry; code and title default to the status's."""
        entry = {
            "code": code or str(status),
            "title": title or TITLES.get(status, "Error"),
            "detail": detail,
        }
        return cls(status, [entry], headers=headers)

    def response(self) -> web.Response:
        """The envelope response for this error."""
        body = {"transactionId": transaction_id(), "errors": self.errors}
        return json_response(self.status, body, self.headers)
