"""client: one attempt on the wire (headers, bodies, answers, failures) and mutual TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr
from wem_der.errors import ConfigError, Misconfigured
from wem_der.send.auth import TokenProvider
from wem_der.send.body import BodyTooLarge, Compression
from wem_der.send.client import (
    SPARE_CONNECTIONS,
    ApiClient,
    ConnectionLost,
    TlsSettings,
    build_ssl_context,
    make_session,
)

from tests.scripted import Reply, Scripted, serve

RECORD = {"data": {"nmi": "8001234567", "comments": "x" * 2000}}
TOKEN = "bearer-tok"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(tls=TlsSettings(), concurrency=4, timeout_s=10) as client_session:
        yield client_session


def api_client(
    session: aiohttp.ClientSession, compression: Compression = Compression.GZIP, **kwargs: object
) -> ApiClient:
    tokens = TokenProvider(
        session=session,
        token_url="http://127.0.0.1:9/unused",
        client_id="c",
        client_secret=SecretStr("s"),
    )
    return ApiClient(
        session=session,
        tokens=tokens,
        participant_id="PARTICIPANT-1",
        compression=compression,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("compression", list(Compression))
async def test_body_arrives_intact_with_a_length(
    server: Scripted, session: aiohttp.ClientSession, compression: Compression
) -> None:
    """Each compression decodes on the server to the record; Content-Length, never chunked."""
    client = api_client(session, compression)
    async with asyncio.timeout(10):
        await client.send("PUT", f"{server.url}/installation/1", client.encode(RECORD), token=TOKEN)
    [seen] = server.seen
    assert orjson.loads(seen.decoded()) == RECORD
    assert seen.headers["Content-Length"] == str(len(seen.raw))
    assert not seen.chunked
    encoding = None if compression is Compression.NONE else compression.value
    assert seen.headers.get("Content-Encoding") == encoding


async def test_the_chunked_detector_works(server: Scripted) -> None:
    """Control: aiohttp's own compress= arrives chunked without a length, as the trap says."""
    async with (
        asyncio.timeout(10),
        aiohttp.ClientSession() as plain,
        plain.put(server.url, data=b"{}", compress="gzip") as response,
    ):
        await response.read()
    [seen] = server.seen
    assert seen.chunked
    assert "Content-Length" not in seen.headers


async def test_aemo_headers_on_the_wire(server: Scripted, session: aiohttp.ClientSession) -> None:
    """Bearer token, participant, market, JSON content type and encoding are all sent."""
    client = api_client(session, market="WEM")
    async with asyncio.timeout(10):
        await client.send("POST", f"{server.url}/installation", client.encode(RECORD), token=TOKEN)
    headers = server.seen[0].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-initiatingParticipantID"] == "PARTICIPANT-1"
    assert headers["X-market"] == "WEM"
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Encoding"] == "gzip"


async def test_get_has_no_body_and_empty_put_has_zero_length(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    """A GET carries no body or content type; a PUT without a body says Content-Length: 0."""
    client = api_client(session)
    async with asyncio.timeout(10):
        await client.send("GET", f"{server.url}/installation/1", None, token=TOKEN)
        await client.send("PUT", f"{server.url}/installation/1", None, token=TOKEN)
    get, put = server.seen
    assert get.method == "GET"
    assert get.raw == b""
    assert "Content-Type" not in get.headers
    assert get.headers["Authorization"] == f"Bearer {TOKEN}"
    assert put.headers["Content-Length"] == "0"


async def test_answer_is_parsed(server: Scripted, session: aiohttp.ClientSession) -> None:
    """Status, transaction ids, data and exceptions come back in the ApiAnswer."""
    exc = {"code": 2023, "connectionId": 1}
    server.script(
        Reply(
            201,
            json={"transactionId": "t-9", "data": {"nmi": "1"}, "exceptions": [exc]},
            headers={"X-Transaction-Id": "h-9"},
        )
    )
    client = api_client(session)
    async with asyncio.timeout(10):
        answer = await client.send("POST", server.url, client.encode(RECORD), token=TOKEN)
    assert answer.status == 201
    assert answer.transaction_id == "t-9"
    assert answer.headers_transaction_id == "h-9"
    assert answer.data == {"nmi": "1"}
    assert answer.exceptions == [exc]


async def test_error_statuses_are_answers_not_exceptions(
    server: Scripted, session: aiohttp.ClientSession
) -> None:
    """A 502 HTML page and a 429 with Retry-After come back as answers."""
    server.script(
        Reply(502, body=b"<html>Bad Gateway</html>"),
        Reply(429, headers={"Retry-After": "3"}),
    )
    client = api_client(session)
    async with asyncio.timeout(10):
        bad_gateway = await client.send("GET", server.url, None, token=TOKEN)
        throttled = await client.send("GET", server.url, None, token=TOKEN)
    assert bad_gateway.status == 502
    assert bad_gateway.raw_excerpt == "<html>Bad Gateway</html>"
    assert throttled.status == 429
    assert throttled.retry_after == "3"


async def test_redirect_is_not_followed(server: Scripted, session: aiohttp.ClientSession) -> None:
    """A 3xx is returned as is: following it would turn a POST into a GET."""
    server.script(Reply(302, headers={"Location": "/elsewhere"}))
    client = api_client(session)
    async with asyncio.timeout(10):
        answer = await client.send("POST", server.url, client.encode(RECORD), token=TOKEN)
    assert answer.status == 302
    assert len(server.seen) == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
@pytest.mark.parametrize("reply", [Reply(drop=True), Reply(json={"x": 1}, truncate=True)])
async def test_transport_failures_propagate_after_one_attempt(
    server: Scripted, session: aiohttp.ClientSession, reply: Reply, method: str
) -> None:
    """A dropped connection or a cut-short body raises ConnectionLost; aiohttp never resends."""
    server.script(reply)
    client = api_client(session)
    body = None if method == "GET" else client.encode(RECORD)
    async with asyncio.timeout(10):
        with pytest.raises(ConnectionLost):
            await client.send(method, server.url, body, token=TOKEN)
    assert len(server.seen) == 1


async def test_refused_connection_propagates(
    session: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    """Nothing listening: aiohttp's connector error, untouched (the request never left)."""
    client = api_client(session)
    async with asyncio.timeout(10):
        with pytest.raises(aiohttp.ClientConnectorError):
            await client.send("GET", f"http://127.0.0.1:{unused_tcp_port}/", None, token=TOKEN)


async def test_oversized_body_is_refused_before_sending(session: aiohttp.ClientSession) -> None:
    """encode() raises BodyTooLarge over max_body_bytes."""
    client = api_client(session, Compression.NONE, max_body_bytes=100)
    with pytest.raises(BodyTooLarge):
        client.encode(RECORD)


async def test_session_pool_never_blocks_the_token_request(server: Scripted) -> None:
    """With every worker's connection busy, the token request still gets a connection."""
    release = asyncio.Event()
    concurrency = 3
    server.script(*[Reply(hold=release)] * concurrency)
    server.script(Reply(json={"access_token": "t", "expires_in": 3599}))
    async with (
        asyncio.timeout(10),
        make_session(tls=TlsSettings(), concurrency=concurrency, timeout_s=10) as session,
    ):
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == concurrency + SPARE_CONNECTIONS
        assert session.connector.limit_per_host == 0
        client = api_client(session)
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(client.send("GET", server.url, None, token=TOKEN))
            await server.wait_seen(concurrency)
            tokens = TokenProvider(
                session=session,
                token_url=f"{server.url}/token",
                client_id="c",
                client_secret=SecretStr("s"),
            )
            async with asyncio.timeout(2):
                assert await tokens.token() == "t"
            release.set()


# --- mutual TLS -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert: Path
    key: Path
    other_ca_file: Path
    server_ctx: ssl.SSLContext


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other_ca = trustme.CA(), trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # the partner gateway demands a client cert
    client = ca.issue_cert("participant-1")
    paths = Pki(
        ca_file=tmp_path / "ca.pem",
        cert=tmp_path / "client.pem",
        key=tmp_path / "client.key",
        other_ca_file=tmp_path / "other-ca.pem",
        server_ctx=server_ctx,
    )
    ca.cert_pem.write_to_path(str(paths.ca_file))
    other_ca.cert_pem.write_to_path(str(paths.other_ca_file))
    client.cert_chain_pems[0].write_to_path(str(paths.cert))
    client.private_key_pem.write_to_path(str(paths.key))
    return paths


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[Scripted]:
    async with serve(pki.server_ctx) as scripted:
        yield scripted


async def _get(tls: TlsSettings, url: str) -> int:
    async with make_session(tls=tls, concurrency=1, timeout_s=10) as session:
        answer = await api_client(session).send("GET", url, None, token=TOKEN)
    return answer.status


async def test_mutual_tls_with_client_cert(pki: Pki, tls_server: Scripted) -> None:
    """With the client certificate and the right CA, the gateway answers."""
    tls = TlsSettings(client_cert=pki.cert, client_key=pki.key, ca_file=pki.ca_file)
    async with asyncio.timeout(10):
        assert await _get(tls, tls_server.url) == 200
    assert len(tls_server.seen) == 1


async def test_mutual_tls_without_client_cert_fails(pki: Pki, tls_server: Scripted) -> None:
    """Without a client certificate the gateway refuses the connection."""
    async with asyncio.timeout(10):
        with pytest.raises(aiohttp.ClientConnectionError):
            await _get(TlsSettings(ca_file=pki.ca_file), tls_server.url)
    assert tls_server.seen == []


async def test_wrong_ca_fails_verification(pki: Pki, tls_server: Scripted) -> None:
    """A trust store without the server's CA fails the handshake: a set-up error naming
    the files to check, not a connection error the retry layer would retry."""
    tls = TlsSettings(client_cert=pki.cert, client_key=pki.key, ca_file=pki.other_ca_file)
    async with asyncio.timeout(10):
        with pytest.raises(Misconfigured, match=r"TLS with .* failed .*check --ca-file"):
            await _get(tls, tls_server.url)


async def test_verify_off_accepts_an_unknown_server(pki: Pki, tls_server: Scripted) -> None:
    """verify=False connects even though the trust store does not know the server's CA."""
    tls = TlsSettings(client_cert=pki.cert, client_key=pki.key, verify=False)
    async with asyncio.timeout(10):
        assert await _get(tls, tls_server.url) == 200


def test_ca_file_replaces_the_system_store(pki: Pki) -> None:
    """With a CA file, only that CA is trusted."""
    ctx = build_ssl_context(TlsSettings(ca_file=pki.ca_file))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1


def test_missing_and_bad_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    """Missing files, a key that does not match, or a lone key: ConfigError naming the path."""
    missing = tmp_path / "nope.pem"
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    cases = [
        (TlsSettings(ca_file=missing), str(missing)),
        (TlsSettings(client_cert=missing, client_key=pki.key), str(missing)),
        (TlsSettings(client_cert=pki.cert, client_key=other_key), str(other_key)),
        (TlsSettings(ca_file=pki.key), str(pki.key)),
        (TlsSettings(client_key=pki.key), str(pki.key)),
    ]
    for tls, path in cases:
        with pytest.raises(ConfigError) as caught:
            build_ssl_context(tls)
        assert path in str(caught.value)
        assert "PRIVATE KEY" not in str(caught.value)


def test_encrypted_key_fails_fast_without_prompting(pki: Pki, tmp_path: Path) -> None:
    """An encrypted key is a ConfigError, not a passphrase prompt that hangs the run."""
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(ConfigError, match="encrypted"):
        build_ssl_context(TlsSettings(client_cert=pki.cert, client_key=encrypted))
