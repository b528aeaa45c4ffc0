"""codec: request encoding and tolerant answer parsing (pure functions, no network)."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable

import orjson
import pytest
from wem_der.send.body import (
    ApiAnswer,
    BodyTooLarge,
    Compression,
    content_hash,
    encode_body,
    parse_answer,
)

RECORD = {"data": {"nmi": "8001234567", "acConnections": [{"count": 1, "details": {}}]}}
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("compression", "decompress"),
    [
        (Compression.GZIP, gzip.decompress),
        (Compression.DEFLATE, zlib.decompress),  # zlib-wrapped: raw deflate would fail here
        (Compression.NONE, bytes),
    ],
)
def test_encode_round_trips(compression: Compression, decompress: Callable[[bytes], bytes]) -> None:
    """Every compression decodes back to the record, with the matching headers."""
    body = encode_body(RECORD, compression)
    assert orjson.loads(decompress(body.data)) == RECORD
    expected = dict(JSON)
    if compression is not Compression.NONE:
        expected["Content-Encoding"] = compression.value
    assert body.headers == expected


def test_encode_leaves_content_length_to_aiohttp() -> None:
    """The encoder never sets Content-Length: aiohttp does, from the bytes."""
    assert "Content-Length" not in encode_body(RECORD, Compression.GZIP).headers


def test_gzip_is_deterministic() -> None:
    """The same record gives the same gzip bytes (mtime is pinned)."""
    assert encode_body(RECORD, Compression.GZIP).data == encode_body(RECORD, Compression.GZIP).data


def test_compression_shrinks_a_repetitive_record() -> None:
    """Compression actually compresses a typical, repetitive record."""
    record = {"data": {"acConnections": [{"equipmentType": "Solar PV Inverter"}] * 200}}
    raw = encode_body(record, Compression.NONE).data
    assert len(encode_body(record, Compression.GZIP).data) < len(raw) / 5


def test_raw_body_over_the_limit_is_refused() -> None:
    """A JSON body over max_bytes raises BodyTooLarge with its size, before compressing."""
    raw_len = len(orjson.dumps(RECORD))
    with pytest.raises(BodyTooLarge) as caught:
        encode_body(RECORD, Compression.GZIP, max_bytes=raw_len - 1)
    assert caught.value.raw_bytes == raw_len
    assert caught.value.sent_bytes is None
    assert caught.value.max_bytes == raw_len - 1
    assert str(raw_len) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_body_at_the_limit_passes() -> None:
    """A body of exactly max_bytes is allowed."""
    raw_len = len(orjson.dumps(RECORD))
    assert len(encode_body(RECORD, Compression.NONE, max_bytes=raw_len).data) == raw_len


def test_compressed_body_over_the_limit_is_refused() -> None:
    """A body whose compressed form is over max_bytes is refused (gzip's header grows tiny ones)."""
    with pytest.raises(BodyTooLarge) as caught:
        encode_body("ab", Compression.GZIP, max_bytes=10)
    assert caught.value.raw_bytes == 4
    assert caught.value.sent_bytes is not None
    assert caught.value.sent_bytes > 10


def test_content_hash_ignores_key_order_at_every_depth() -> None:
    """Key order, even nested, does not change the hash; a value does."""
    a = {"nmi": "1", "data": {"x": 1, "y": [{"p": 1, "q": 2}]}}
    b = {"data": {"y": [{"q": 2, "p": 1}], "x": 1}, "nmi": "1"}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({"nmi": "1", "data": {"x": 2, "y": [{"p": 1, "q": 2}]}})
    assert len(content_hash(a)) == 64
    assert int(content_hash(a), 16) >= 0


def test_parse_success_envelope() -> None:
    """`{transactionId, data}` gives the data and the transaction id."""
    body = orjson.dumps({"transactionId": "t-1", "data": {"nmi": "8001234567"}})
    answer = parse_answer(201, body, {})
    assert answer == ApiAnswer(
        status=201, transaction_id="t-1", data={"nmi": "8001234567"}, json_object=True
    )


def test_parse_error_envelope_normalises_codes_to_strings() -> None:
    """Error codes come back as strings, extra members kept, data None."""
    body = orjson.dumps(
        {"transactionId": "t", "errors": [{"code": 1020, "title": "Bad", "detail": "d", "x": 1}]}
    )
    answer = parse_answer(400, body, {})
    assert answer.errors == [{"code": "1020", "title": "Bad", "detail": "d", "x": 1}]
    assert answer.data is None


def test_parse_single_object_errors() -> None:
    """`errors` as one object (the NEM habit) becomes a one-item list."""
    body = orjson.dumps({"transactionId": "t", "errors": {"code": "422", "title": "No"}})
    assert parse_answer(422, body, {}).errors == [{"code": "422", "title": "No", "detail": ""}]


def test_parse_odd_error_items() -> None:
    """Error items that are not objects are kept as details, not dropped."""
    body = orjson.dumps({"errors": ["boom", None]})
    details = [e["detail"] for e in parse_answer(500, body, {}).errors]
    assert details == ["boom", ""]


def test_parse_flat_oauth_failure() -> None:
    """The OAuth gateway's flat `{code,title,detail,source}` is read as one error."""
    flat = {"code": 401, "title": "Unauthorized", "detail": "Authorization failed", "source": "GW"}
    answer = parse_answer(401, orjson.dumps(flat), {})
    assert answer.errors == [{**flat, "code": "401"}]
    assert answer.data is None


def test_flat_shape_on_success_is_data() -> None:
    """A 200 whose record happens to have `code` and `title` is data, not an error."""
    doc = {"code": "X", "title": "T"}
    answer = parse_answer(200, orjson.dumps(doc), {})
    assert answer.errors == []
    assert answer.data == doc


def test_parse_exceptions_beside_or_inside_data() -> None:
    """Second-level exceptions are read beside `data`, or inside it when not beside."""
    exc = {"code": 2023, "name": "x", "connectionId": 7}
    beside = orjson.dumps({"transactionId": "t", "data": {}, "exceptions": [exc]})
    inside = orjson.dumps({"transactionId": "t", "data": {"exceptions": exc}})
    assert parse_answer(200, beside, {}).exceptions == [exc]
    assert parse_answer(200, inside, {}).exceptions == [exc]
    assert parse_answer(200, orjson.dumps({"data": {}}), {}).exceptions == []


@pytest.mark.parametrize("key", ["transactionId", "transactionID"])
def test_transaction_id_either_casing(key: str) -> None:
    """Both spellings of the transaction id are read."""
    assert parse_answer(200, orjson.dumps({key: "abc", "data": 1}), {}).transaction_id == "abc"


def test_bare_body_is_data_and_keeps_transaction_id() -> None:
    """A body that is not an envelope (the token answer) is the data, whole."""
    doc = {"transactionID": "t", "acess_token": "tok", "access_token_expires_in": "3599"}
    answer = parse_answer(200, orjson.dumps(doc), {})
    assert answer.data == doc
    assert answer.transaction_id == "t"


def test_headers_transaction_id_and_retry_after_any_case() -> None:
    """A header naming a transaction, and Retry-After, are found whatever their case."""
    headers = {"x-aemo-TransactionID": "h-1", "retry-after": "7"}
    answer = parse_answer(429, b"", headers)
    assert answer.headers_transaction_id == "h-1"
    assert answer.retry_after == "7"
    assert answer.data is None


def test_html_body_gives_an_excerpt() -> None:
    """A proxy's HTML page becomes a short excerpt for diagnosis, nothing else."""
    html = b"<html><body>502 Bad Gateway</body></html>" + b"x" * 2000
    answer = parse_answer(502, html, {"Content-Type": "text/html"})
    assert answer.raw_excerpt.startswith("<html><body>502 Bad Gateway")
    assert len(answer.raw_excerpt) == 500
    assert answer.data is None


@pytest.mark.parametrize("body", [b"", b"   \r\n"])
def test_empty_body(body: bytes) -> None:
    """An empty body is an answer with nothing in it."""
    assert parse_answer(204, body, {}) == ApiAnswer(status=204)


@pytest.mark.parametrize(
    ("body", "data"), [(b"[1,2]", [1, 2]), (b'"s"', "s"), (b"3", 3), (b"null", None)]
)
def test_non_object_json_is_data(body: bytes, data: object) -> None:
    """JSON that is not an object is kept as data."""
    assert parse_answer(200, body, {}).data == data


def test_arbitrary_bytes_never_raise() -> None:
    """Random bytes and mangled JSON never make parse_answer raise."""
    rng = random.Random(20240611)
    seeds = [
        orjson.dumps({"transactionId": 1, "errors": {"code": None}, "data": [1]}),
        orjson.dumps({"errors": [[]], "exceptions": "x", "transactionID": True}),
        orjson.dumps({"code": {}, "title": [], "detail": 1.5}),
    ]
    for _ in range(3000):
        if rng.random() < 0.5:
            body = rng.randbytes(rng.randint(0, 64))
        else:
            seed = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(0, 3)):
                seed[rng.randrange(len(seed))] = rng.randrange(256)
            body = bytes(seed)
        answer = parse_answer(rng.choice([200, 400, 401, 502]), body, {"X-Transaction": "h"})
        assert isinstance(answer.errors, list)
        assert all(isinstance(e["code"], str) for e in answer.errors)
        assert answer.headers_transaction_id == "h"
