"""The OAuth token: cached, refreshed ahead of expiry, one refresh at a time for every caller.

AEMO's token endpoint [spec]: `POST {token_url}?grant_type=client_credentials` with
`Authorization: Basic base64(client_id:client_secret)` and no body. Its documented success
body misspells the token key and gives the lifetime as a string:
`{"transactionID": "...", "acess_token": "...", "access_token_expires_in": "3599"}`.

The token request goes through the plain session with no client middleware (a middleware
that adds tokens would recurse into this provider) and takes no quota: OAuth is a separate
API from the DER register's 6000-a-minute quota [doc].
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from pydantic import SecretStr

from wem_der.errors import CredentialsRefused, Misconfigured, RunAborted
from wem_der.send.answers import first_error
from wem_der.send.body import ApiAnswer, parse_answer
from wem_der.send.retry import RETRYABLE_EXCEPTIONS, TokenUnavailable, full_jitter_s

# AEMO tokens live about an hour; its documented example is 3599 s [spec].
DEFAULT_LIFETIME_S = 3599.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0

# Failures worth another attempt: the network and timeouts, as for the register, and a
# body cut short, which ApiClient.send re-types as a lost connection and this plain
# session does not.
_TRANSIENT: tuple[type[BaseException], ...] = (*RETRYABLE_EXCEPTIONS, aiohttp.ClientPayloadError)

log = structlog.get_logger()


class _Transient(Exception):
    """A token attempt that may succeed if repeated."""


class TokenProvider:
    """Hands out a valid bearer token; see the module docstring for AEMO's quirks."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        refresh_margin_s: float = 120.0,
        timeout_s: float = 30.0,
        max_attempts: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._client_id = client_id
        basic = base64.b64encode(f"{client_id}:{client_secret.get_secret_value()}".encode())
        # SecretStr, like the secret and the token, so no repr or log line can show them.
        self._basic = SecretStr(basic.decode("ascii"))
        self._secret = client_secret
        self._margin_s = refresh_margin_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max(1, max_attempts)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._lock = asyncio.Lock()
        self._token: SecretStr | None = None
        self._refresh_at = float("-inf")
        self._failed: RunAborted | None = None
        self.refreshes = 0

    def __repr__(self) -> str:
        return (
            f"TokenProvider(token_url={self._token_url!r}, client_id={self._client_id!r}, "
            f"refreshes={self.refreshes})"
        )

    async def token(self) -> str:
        """A token valid for at least the refresh margin; refreshes it if needed."""
        current = self._current()
        if current is not None:
            return current
        async with self._lock:
            # Whoever held the lock before us may have refreshed already: re-check.
            current = self._current()
            if current is not None:
                return current
            return await self._refresh()

    def invalidate(self, token: str) -> None:
        """A 401 was seen with `token`: refresh on the next `token()`, unless already done."""
        if self._token is not None and self._token.get_secret_value() == token:
            self._refresh_at = float("-inf")

    def _current(self) -> str | None:
        if self._failed is not None:
            # One verdict for every worker: asking again with refused credentials only
            # risks locking the account out, and a token endpoint that is down for one
            # worker's whole retry budget must not be retried by each of the others in turn.
            raise type(self._failed)(*self._failed.args)
        if self._token is None or self._clock() >= self._refresh_at:
            return None
        return self._token.get_secret_value()

    async def _refresh(self) -> str:
        try:
            return await self._fetch()
        except RunAborted as exc:
            self._failed = exc
            raise

    async def _fetch(self) -> str:
        attempt = 0
        while True:
            attempt += 1
            started = self._clock()
            try:
                token, lifetime_s = await self._request()
                break
            except _Transient as exc:
                if attempt >= self._max_attempts:
                    # Not the run's end: the request it was for is retried as one that met
                    # an outage, and the run's breaker (send/breaker.py) rides it out.
                    raise TokenUnavailable(
                        f"the token endpoint {self._token_url} failed {attempt} times, last "
                        f"with {exc}"
                    ) from exc
                delay = full_jitter_s(
                    attempt, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, rng=self._rng
                )
                log.warning("auth.retry_scheduled", attempt=attempt, reason=str(exc), delay_s=delay)
                await self._sleep(delay)
        # A lifetime shorter than the margin would refresh on every call: cap the margin.
        margin = min(self._margin_s, lifetime_s / 2)
        self._token = SecretStr(token)
        self._refresh_at = started + lifetime_s - margin
        self.refreshes += 1
        log.info("auth.token_refreshed", lifetime_s=lifetime_s, attempts=attempt)
        return token

    async def _request(self) -> tuple[str, float]:
        try:
            async with self._session.post(
                self._token_url,
                params={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {self._basic.get_secret_value()}"},
                timeout=self._timeout,
                middlewares=(),  # never through a token-adding middleware: it would recurse
                allow_redirects=False,
            ) as response:
                answer = parse_answer(response.status, await response.read(), response.headers)
        except aiohttp.ClientSSLError as exc:
            raise Misconfigured.tls(f"the token endpoint {self._token_url}", exc) from None
        except _TRANSIENT as exc:
            reason = f"{type(exc).__name__} {exc}".strip()
            if isinstance(exc, aiohttp.ServerDisconnectedError) and self._token_url.startswith(
                "https:"
            ):
                # Under TLS 1.3 a server checks the client certificate after the handshake
                # and, refusing it, just closes: the client reads a bare end of stream, the
                # same as a server gone away. Name the likelier cause.
                reason += (
                    " (a register that refuses the client certificate closes the connection"
                    " like this: check --client-cert and --client-key)"
                )
            raise _Transient(reason) from exc
        return self._read(answer)

    def _read(self, answer: ApiAnswer) -> tuple[str, float]:
        status = answer.status
        if status in (408, 429) or status >= 500:
            raise _Transient(f"HTTP {status}")
        said = self._redact(_describe(answer))
        if status in (401, 403) or (status == 400 and "invalid_client" in said):
            raise CredentialsRefused(
                f"the token endpoint refused the client credentials (HTTP {status}{said}); "
                f"check the client id {self._client_id!r}, the client secret and the token "
                f"URL {self._token_url} (pre-production and production have different ones)"
            )
        body = answer.data if isinstance(answer.data, dict) else {}
        token = body.get("acess_token") or body.get("access_token")  # AEMO's spelling [spec]
        if status not in (200, 201) or not isinstance(token, str) or not token:
            raise Misconfigured(
                f"the token endpoint answered HTTP {status}{said} without an access token; "
                f"check the token URL {self._token_url}"
            )
        return token, self._lifetime(body)

    def _lifetime(self, body: dict[str, Any]) -> float:
        raw = body.get("access_token_expires_in", body.get("expires_in"))
        try:
            # AEMO sends "3599", a string [spec]; others send a number.
            lifetime = float(raw) if isinstance(raw, str | int | float) else 0.0
        except ValueError:
            lifetime = 0.0
        if not 0.0 < lifetime < float("inf"):
            log.warning("auth.expiry_missing", assumed_s=DEFAULT_LIFETIME_S)
            return DEFAULT_LIFETIME_S
        return lifetime

    def _redact(self, text: str) -> str:
        # Server text goes into exception messages; a gateway echoing the header must not leak.
        for secret in (self._secret.get_secret_value(), self._basic.get_secret_value()):
            if secret:
                text = text.replace(secret, "***")
        return text


def _describe(answer: ApiAnswer) -> str:
    """`: title: detail` of the first error, or of an OAuth `error` member, for messages."""
    if answer.errors:
        text = first_error(answer)
    elif isinstance(answer.data, dict):
        parts = (str(answer.data.get("error", "")), str(answer.data.get("error_description", "")))
        text = ": ".join(p for p in parts if p)
    else:
        text = answer.raw_excerpt[:120]
    return f": {text}" if text else ""
