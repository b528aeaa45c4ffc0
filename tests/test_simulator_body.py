"""Request bodies: length, size, media type, compression, JSON and schema."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
import pytest
from pydantic import SecretStr
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.testing import (
    SimClient,
    connected,
    encode,
    expect_error,
    sample_installation,
)

LIMIT = 4000
SETTINGS = SimulatorSettings(client_secret=SecretStr("s"), max_body_bytes=LIMIT)


@pytest.fixture
async def client() -> AsyncIterator[SimClient]:
    async with connected(SETTINGS) as c:
        yield c


def create_url(client: SimClient) -> str:
    return client.sim.installation_url + "/installation"


def json_headers(client: SimClient, **extra: str) -> dict[str, str]:
    return {**client.headers(), "Content-Type": "application/json", **extra}


async def test_chunked_body_without_length_is_411(client: SimClient) -> None:
    """A chunked body (what aiohttp's compress= sends) has no Content-Length: 411."""

    async def chunks() -> AsyncIterator[bytes]:
        yield orjson.dumps({"data": sample_installation()})

    async with asyncio.timeout(10):
        async with client.session.post(
            create_url(client), data=chunks(), headers=json_headers(client)
        ) as resp:
            assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
            assert resp.status == 411
            body = await resp.json()
        assert body["errors"][0]["code"] == "411"
        assert client.sim.store.installation("6001000001") is None


async def test_declared_size_over_limit_is_413(client: SimClient) -> None:
    """A body over max_body_bytes is refused before it is read."""
    async with asyncio.timeout(10):
        record = sample_installation(comments="x" * LIMIT)
        expect_error(await client.create(record), 413, "413")


async def test_compressed_size_counts_too(client: SimClient) -> None:
    """The limit applies to the bytes received even when compressed."""
    async with asyncio.timeout(10):
        incompressible = encode({"data": sample_installation()}, "gzip") + bytes(range(256)) * 20
        answer = await client.send(
            "POST",
            create_url(client),
            data=incompressible,
            headers=json_headers(client, **{"Content-Encoding": "gzip"}),
        )
        expect_error(answer, 413, "413")


async def test_decompressed_size_over_limit_is_413(client: SimClient) -> None:
    """A small gzip body that inflates past the limit is refused (no bomb inflated)."""
    async with asyncio.timeout(10):
        record = sample_installation(comments=" " * (LIMIT * 2))
        data = encode({"data": record}, "gzip")
        assert len(data) < LIMIT
        answer = await client.send(
            "POST",
            create_url(client),
            data=data,
            headers=json_headers(client, **{"Content-Encoding": "gzip"}),
        )
        assert "Decompressed" in expect_error(answer, 413, "413")["detail"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml"])
async def test_wrong_media_type_is_415(client: SimClient, content_type: str | None) -> None:
    """Only application/json is accepted."""
    async with asyncio.timeout(10):
        headers = client.headers()
        if content_type is not None:
            headers["Content-Type"] = content_type
        data = encode({"data": sample_installation()})
        answer = await client.send("POST", create_url(client), data=data, headers=headers)
        expect_error(answer, 415, "415")


async def test_charset_parameter_is_accepted(client: SimClient) -> None:
    """application/json; charset=utf-8 is still JSON."""
    async with asyncio.timeout(10):
        headers = json_headers(client, **{"Content-Type": "application/json; charset=utf-8"})
        data = encode({"data": sample_installation()})
        answer = await client.send("POST", create_url(client), data=data, headers=headers)
        assert answer.status == 200, answer.body


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies_are_decoded(client: SimClient, encoding: str) -> None:
    """gzip and (zlib) deflate bodies with an explicit length are accepted."""
    async with asyncio.timeout(10):
        answer = await client.call(
            "POST", create_url(client), {"data": sample_installation()}, encoding=encoding
        )
        assert answer.status == 200, answer.body
        assert client.sim.store.installation("6001000001") is not None


async def test_raw_deflate_is_accepted(client: SimClient) -> None:
    """Some clients send deflate without the zlib wrapper; it is accepted too."""
    async with asyncio.timeout(10):
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw = orjson.dumps({"data": sample_installation()})
        data = packer.compress(raw) + packer.flush()
        headers = json_headers(client, **{"Content-Encoding": "deflate"})
        answer = await client.send("POST", create_url(client), data=data, headers=headers)
        assert answer.status == 200, answer.body


async def test_unknown_encoding_is_415(client: SimClient) -> None:
    """Content-Encoding other than gzip or deflate: 415."""
    async with asyncio.timeout(10):
        headers = json_headers(client, **{"Content-Encoding": "br"})
        data = encode({"data": sample_installation()})
        answer = await client.send("POST", create_url(client), data=data, headers=headers)
        assert "br" in expect_error(answer, 415, "415")["detail"]


@pytest.mark.parametrize(
    "data",
    [b"not gzip at all", gzip.compress(b'{"data": {}}')[:-6]],
    ids=["garbage", "truncated"],
)
async def test_corrupt_gzip_is_400(client: SimClient, data: bytes) -> None:
    """A gzip body that does not inflate to its end: 400."""
    async with asyncio.timeout(10):
        headers = json_headers(client, **{"Content-Encoding": "gzip"})
        answer = await client.send("POST", create_url(client), data=data, headers=headers)
        assert "gzip" in expect_error(answer, 400, "400")["detail"]


async def test_malformed_json_is_400(client: SimClient) -> None:
    """Bytes that are not JSON: 400."""
    async with asyncio.timeout(10):
        answer = await client.send(
            "POST", create_url(client), data=b'{"data": ', headers=json_headers(client)
        )
        assert "JSON" in expect_error(answer, 400, "400")["detail"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([1, 2], "(request body): expected a JSON object"),
        (sample_installation(), "data: required field is missing"),
        ({"data": sample_installation(), "extra": 1}, "extra: unknown field"),
        ({"data": "text"}, "data: expected a JSON object"),
    ],
    ids=["list", "unwrapped", "extra-key", "data-not-object"],
)
async def test_body_shape_failures_are_400_1020(
    client: SimClient, body: object, fragment: str
) -> None:
    """The Installation body must be an object holding only `data`."""
    async with asyncio.timeout(10):
        answer = await client.call("POST", create_url(client), body)
        assert answer.status == 400
        details = [e["detail"] for e in answer.body["errors"]]
        assert all(e["code"] == "1020" for e in answer.body["errors"])
        assert any(fragment in d for d in details), details


async def test_schema_failure_names_every_field_path(client: SimClient) -> None:
    """Schema failures: 400 code 1020, one error per field, each naming its path."""
    async with asyncio.timeout(10):
        record = sample_installation(approvedCapacity="10")
        record["acConnections"][0]["count"] = -1
        record["acConnections"][0]["devices"][0]["type"] = "Nuclear"
        answer = await client.create(record)
        assert answer.status == 400
        assert {e["code"] for e in answer.body["errors"]} == {"1020"}
        details = " | ".join(e["detail"] for e in answer.body["errors"])
        assert "data.approvedCapacity:" in details
        assert "data.acConnections[0].count:" in details
        assert "data.acConnections[0].devices[0].type:" in details
        assert client.sim.store.installation("6001000001") is None


async def test_unknown_and_server_fields_are_refused(client: SimClient) -> None:
    """Strict: an unknown field, or a server-maintained one, is a 1020."""
    async with asyncio.timeout(10):
        record = sample_installation(exportLimitKW=5)
        record["acConnections"][0]["connectionId"] = 7
        answer = await client.create(record)
        details = " | ".join(e["detail"] for e in answer.body["errors"])
        assert answer.status == 400
        assert "data.exportLimitKW: unknown field" in details
        assert "data.acConnections[0].connectionId" in details


async def test_a_client_gone_mid_body_is_a_400_not_a_logged_error(
    client: SimClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a body, then the connection closes: counted as a 400, nothing stored, and no
    "Error handling request" traceback in the server's log."""
    url = urlsplit(create_url(client))
    assert url.hostname is not None
    head = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in client.headers().items()]
    head += ["Content-Length: 1000", "", ""]
    async with asyncio.timeout(10):
        _, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write("\r\n".join(head).encode() + b'{"data": {"nmi": "60010')
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        while "installation.create" not in client.sim.stats()["requests"]:
            await asyncio.sleep(0)  # the server's turn: bounded by the timeout above
    assert client.sim.stats()["requests"]["installation.create"] == {"400": 1}
    assert client.sim.stats()["installations"] == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
