"""Reading a POST/PUT body the way AEMO's gateway documents it.

The checks, in order: a Content-Length is required (411; a chunked body has none), the
declared size and the size received are at most the limit, compressed or not (413), the
media type is application/json (415), the Content-Encoding is gzip, deflate or none (415
otherwise), the decompressed size is at most the limit too (413), the body decompresses
(400) and parses as JSON (400) [doc]. The app runs with `auto_decompress=False`, so the raw
bytes arrive here and both sizes can be counted.
"""

from __future__ import annotations

import zlib

import orjson
from aiohttp import hdrs, web

from wem_der.simulator.envelope import ApiError

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


async def read_json(request: web.Request, max_bytes: int) -> object:
    """The decoded JSON body of `request`, or an `ApiError` saying what is wrong with it."""
    headers = request.headers
    length = headers.get(hdrs.CONTENT_LENGTH)
    if length is None or "chunked" in headers.get(hdrs.TRANSFER_ENCODING, "").lower():
        raise ApiError.one(411, "A Content-Length header is required; chunked bodies are refused")
    # aiohttp's parser has already refused a Content-Length that is not a number.
    if int(length) > max_bytes:
        raise ApiError.one(413, f"Request body of {length} bytes is over the {max_bytes} limit")
    if request.content_type != "application/json":
        raise ApiError.one(
            415, f"Content-Type must be application/json, not {request.content_type}"
        )
    encoding = headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ApiError.one(415, f"Content-Encoding {encoding!r} is not gzip or deflate")
    try:
        raw = await request.read()
    except ConnectionResetError:
        # The client went away mid-body (killed, say): nothing is stored and no one reads
        # the answer. A 400 in the statistics, not a traceback in the server's log.
        raise ApiError.one(400, "The connection closed before the whole body arrived") from None
    if encoding != "identity":
        raw = _decompress(raw, encoding, max_bytes)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError.one(400, f"Request body is not valid JSON: {exc}") from None


def _decompress(raw: bytes, encoding: str, max_bytes: int) -> bytes:
    # HTTP's "deflate" is zlib-wrapped (RFC 9110), but some clients send raw deflate:
    # accept both, as most servers do.
    attempts = (_GZIP_WBITS,) if encoding == "gzip" else (_ZLIB_WBITS, _RAW_DEFLATE_WBITS)
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            # Stop one byte past the limit: enough to know it is over, without inflating a
            # compression bomb in full.
            out = inflater.decompress(raw, max_bytes + 1)
        except zlib.error:
            continue
        if len(out) > max_bytes:
            raise ApiError.one(413, f"Decompressed request body is over the {max_bytes} limit")
        if not inflater.eof or inflater.unused_data:
            break
        return out
    raise ApiError.one(400, f"Request body is not valid {encoding} data")
