"""One HTTP attempt against the register, over one keep-alive session with mutual TLS.

`ApiClient.send` makes exactly one request and returns what came back as an `ApiAnswer`;
deciding what an answer means, and whether to try again, belongs to the caller. Transport
failures propagate as `aiohttp.ClientConnectionError` (`ConnectionLost` when the request
may have reached the server) or `TimeoutError`; a failed TLS handshake as `Misconfigured`.

The partner gateway uses mutual TLS: an AEMO-signed client certificate and key, separate
for pre-production and production [doc][nem].
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from wem_der.errors import ConfigError, Misconfigured
from wem_der.send.auth import TokenProvider
from wem_der.send.body import (
    MAX_BODY_BYTES,
    ApiAnswer,
    Compression,
    EncodedBody,
    encode_body,
    parse_answer,
)

# Connections beyond one per worker: the token refresh shares the session and must never
# wait behind the workers for a free connection.
SPARE_CONNECTIONS = 4

log = structlog.get_logger()


@dataclass(frozen=True)
class TlsSettings:
    """Client certificate, key and trust store for the partner gateway."""

    client_cert: Path | None = None
    client_key: Path | None = None  # None: the key is in the certificate file
    ca_file: Path | None = None  # None: the system's trust store
    verify: bool = True


class _EncryptedKey(Exception):
    """The client key needs a passphrase, which a batch run cannot type."""


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal and hang a batch run.
    raise _EncryptedKey("the key is encrypted; give an unencrypted key, readable only by this user")


def build_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context for `tls`; `ConfigError` names the file that cannot be used."""
    if tls.client_key is not None and tls.client_cert is None:
        raise ConfigError(f"a client key ({tls.client_key}) needs a client certificate too")
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
    except OSError as exc:
        raise ConfigError(f"cannot use the CA file {tls.ca_file}: {_reason(exc)}") from exc
    if not tls.verify:
        log.warning("tls.verification_disabled")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None:
        try:
            ctx.load_cert_chain(tls.client_cert, tls.client_key, password=_no_password)
        except (OSError, _EncryptedKey) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"cannot use the client certificate {tls.client_cert} with the key "
                f"{tls.client_key or tls.client_cert}: {_reason(exc)}; check both files are "
                f"PEM and belong together"
            ) from exc
    return ctx


def _reason(exc: Exception) -> str:
    # OpenSSL's and the OS's reasons name the problem, never the file's contents.
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def make_session(*, tls: TlsSettings, concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    """The run's one keep-alive session; call inside the event loop and `async with` it."""
    connector = aiohttp.TCPConnector(
        ssl=build_ssl_context(tls),
        # A worker is granted quota and then sends at once: the request's send time must be
        # its grant time, so the pool never makes a granted worker wait for a connection.
        limit=concurrency + SPARE_CONNECTIONS,
        limit_per_host=0,
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


class ConnectionLost(aiohttp.ClientConnectionError):
    """The connection failed once the request may have left: the server may have acted on it."""


async def _one_attempt(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    # aiohttp silently resends an idempotent request (GET, PUT) once when the connection
    # drops with ClientOSError or ServerDisconnectedError: a second attempt outside the
    # quota and the retry policy. Any other exception type ends its loop, so re-type them.
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise  # never connected; aiohttp does not resend these
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc


class ApiClient:
    """Sends one request with AEMO's headers and reads the whole answer."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        participant_id: str,
        market: str = "WEM",
        compression: Compression = Compression.GZIP,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout_s: float = 60.0,
    ) -> None:
        self._session = session
        self.tokens = tokens
        self._compression = compression
        self._max_body_bytes = max_body_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Required on every register call [spec]; "WEM" as the market value is a [guess].
        self._fixed_headers = {"X-initiatingParticipantID": participant_id, "X-market": market}

    def encode(self, payload: object) -> EncodedBody:
        """The request body for `payload`; raises `BodyTooLarge` before any request is made."""
        return encode_body(payload, self._compression, max_bytes=self._max_body_bytes)

    async def send(
        self, method: str, url: str, body: EncodedBody | None, *, token: str
    ) -> ApiAnswer:
        """Exactly one attempt; the answer whatever its status, transport failures raised."""
        headers = {"Authorization": f"Bearer {token}", **self._fixed_headers}
        if body is not None:
            headers.update(body.headers)
        try:
            async with self._session.request(
                method,
                url,
                # bytes, so aiohttp sets Content-Length (none gives "0" on PUT/POST): AEMO
                # answers 411 without one [doc].
                data=None if body is None else body.data,
                headers=headers,
                timeout=self._timeout,
                # A redirect would turn a POST into a GET; let the caller see the 3xx.
                allow_redirects=False,
                middlewares=(_one_attempt,),
            ) as response:
                raw = await response.read()
        except aiohttp.ClientSSLError as exc:
            # Before the retry layer sees it as a connection error: it is no weather.
            raise Misconfigured.tls(url, exc) from None
        except aiohttp.ClientPayloadError as exc:
            # The body was cut short: a dropped connection, for the retry layer's purposes.
            raise ConnectionLost(f"response body cut short: {exc}") from exc
        return parse_answer(response.status, raw, response.headers)
