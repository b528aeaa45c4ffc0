"""Bytes in and out of the register: orjson + compression on the way out, tolerant parsing back.

Pure functions, no I/O. The request side exists because aiohttp's own `compress=` sends a
chunked body without Content-Length, which AEMO refuses with 411 [doc]: we compress the
bytes here and hand aiohttp a `bytes` body, for which it sets Content-Length itself.

The response side never raises: a proxy's HTML 502, an empty body or garbage bytes all
become an `ApiAnswer` the caller can classify and record.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

# Level 6 is zlib's default and the knee of its curve: on JSON records it is within a few
# per cent of level 9's size at a fraction of the CPU, and compression runs on the event loop.
COMPRESS_LEVEL = 6
# AEMO: 10 MB per request, compressed or not [doc].
MAX_BODY_BYTES = 10 * 1024 * 1024
EXCERPT_CHARS = 500

# Members whose presence makes a JSON object an AEMO envelope rather than a bare record
# [spec]: `{"transactionId", "data"}` on success, `{"transactionId", "errors"}` on failure.
_ENVELOPE_KEYS = frozenset({"data", "errors"})


class Compression(StrEnum):
    """Request body compression; AEMO accepts gzip or deflate [doc]."""

    GZIP = "gzip"
    DEFLATE = "deflate"
    NONE = "none"


class BodyTooLarge(ValueError):
    """A request body is over the size limit; sending it would only earn a 413 or 400."""

    def __init__(self, *, raw_bytes: int, sent_bytes: int | None, max_bytes: int) -> None:
        self.raw_bytes = raw_bytes
        self.sent_bytes = sent_bytes
        self.max_bytes = max_bytes
        compressed = "" if sent_bytes is None else f", {sent_bytes} bytes compressed"
        super().__init__(
            f"request body is {raw_bytes} bytes as JSON{compressed}; AEMO accepts at most "
            f"{max_bytes} bytes per request, compressed or not: split the record"
        )


@dataclass(frozen=True, slots=True)
class EncodedBody:
    """The exact bytes to send and the headers that describe them (no Content-Length)."""

    data: bytes
    headers: dict[str, str]


def encode_body(
    obj: object, compression: Compression, *, max_bytes: int = MAX_BODY_BYTES
) -> EncodedBody:
    """Serialise `obj` with orjson and compress it; raise `BodyTooLarge` over `max_bytes`."""
    raw = orjson.dumps(obj)
    if len(raw) > max_bytes:
        raise BodyTooLarge(raw_bytes=len(raw), sent_bytes=None, max_bytes=max_bytes)
    headers = {"Content-Type": "application/json"}  # anything else earns a 415 [doc]
    if compression is Compression.NONE:
        return EncodedBody(raw, headers)
    if compression is Compression.GZIP:
        # mtime=0: the same record always gives the same bytes.
        data = gzip.compress(raw, compresslevel=COMPRESS_LEVEL, mtime=0)
    else:
        # HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2), not a raw deflate stream.
        data = zlib.compress(raw, COMPRESS_LEVEL)
    if len(data) > max_bytes:
        raise BodyTooLarge(raw_bytes=len(raw), sent_bytes=len(data), max_bytes=max_bytes)
    headers["Content-Encoding"] = compression.value
    return EncodedBody(data, headers)


def canonical_json(payload: dict[str, Any]) -> bytes:
    """A record's key-sorted JSON: what `content_hash` hashes. Sorting keys changes no
    byte count, so its length is that of the record as it is sent, unwrapped."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def content_hash(payload: dict[str, Any], canonical: bytes | None = None) -> str:
    """The canonical content identity of a record: sha256 of its key-sorted JSON
    (`canonical`, where the caller has it already)."""
    return hashlib.sha256(canonical or canonical_json(payload)).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """One HTTP answer, reduced to what the pipeline classifies and records."""

    status: int
    transaction_id: str | None = None
    data: Any = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    retry_after: str | None = None
    headers_transaction_id: str | None = None
    raw_excerpt: str = ""
    # Whether the body was a JSON object, as every answer of the register is [spec].
    json_object: bool = False


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _as_list(value: object) -> list[object]:
    # The NEM API sometimes sends `errors` as one object instead of a list [nem].
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _error(item: object) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {"code": "", "title": "", "detail": _text(item)}
    # Codes come as "400" [spec] or 401 (OAuth [spec]): strings, so outcomes compare alike.
    # Extra members (the OAuth `source`, say) are kept for diagnosis.
    return {**item, **{k: _text(item.get(k)) for k in ("code", "title", "detail")}}


def _exception(item: object) -> dict[str, Any]:
    return dict(item) if isinstance(item, dict) else {"detail": _text(item)}


def _transaction_id(doc: Mapping[str, Any]) -> str | None:
    # AEMO spells it `transactionId` on the register [spec] and `transactionID` on OAuth [spec].
    for key in ("transactionId", "transactionID"):
        value = doc.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def _from_headers(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    retry_after = header_txn = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "retry-after" and retry_after is None:
            retry_after = value
        # No transaction header is documented; keep any that looks like one [guess].
        elif "transaction" in lowered and header_txn is None:
            header_txn = value
    return retry_after, header_txn


def parse_answer(status: int, body: bytes, headers: Mapping[str, str]) -> ApiAnswer:
    """Read an HTTP answer tolerantly; never raises, whatever the body holds."""
    retry_after, header_txn = _from_headers(headers)
    data: Any = None
    errors: list[dict[str, Any]] = []
    exceptions: list[dict[str, Any]] = []
    excerpt = ""
    doc: Any = None
    if body.strip():
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            excerpt = body[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    is_object = isinstance(doc, dict)
    if not is_object:
        data = doc
    elif _ENVELOPE_KEYS & doc.keys():
        data = doc.get("data")
        raw_exceptions = doc.get("exceptions")
        if raw_exceptions is None and isinstance(data, dict):
            # Second-level exceptions come with a 200/201 [doc]; whether beside `data` or
            # inside it is not documented, so look in both [guess].
            raw_exceptions = data.get("exceptions")
        errors = [_error(e) for e in _as_list(doc.get("errors"))]
        exceptions = [_exception(e) for e in _as_list(raw_exceptions)]
    elif status >= 400 and "code" in doc and ("title" in doc or "detail" in doc):
        # The flat failure of the OAuth gateway: {code, title, detail, source} [spec].
        errors = [_error(doc)]
    else:
        data = doc
    return ApiAnswer(
        status,
        transaction_id=_transaction_id(doc) if is_object else None,
        data=data,
        errors=errors,
        exceptions=exceptions,
        retry_after=retry_after,
        headers_transaction_id=header_txn,
        raw_excerpt=excerpt,
        json_object=is_object,
    )
