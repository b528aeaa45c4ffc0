"""Bearer tokens: issued by the OAuth endpoint, checked on every DER request.

Tokens are opaque random strings (AEMO's look like JWTs, but a client must not read them).
They expire `lifetime_s` after issue on the injected clock, and a fault profile can revoke
at given times every token issued before then, as a key rotation on AEMO's side would.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable

from pydantic import SecretStr

# Expired tokens are swept on issue once this many are held, so a long run that refreshes
# often does not grow the table without bound.
_SWEEP_AT = 10_000


class TokenIssuer:
    """Issue and check bearer tokens against an injected clock."""

    def __init__(self, lifetime_s: float, *, revoke_at: Iterable[float] = ()) -> None:
        self.lifetime_s = lifetime_s
        # Absolute clock times, sorted, at which earlier tokens are revoked.
        self._revoke_at = sorted(revoke_at)
        self._issued: dict[str, float] = {}
        self.issued_total = 0

    def issue(self, now: float) -> str:
        """A new token valid from `now` for `lifetime_s` seconds."""
        if len(self._issued) >= _SWEEP_AT:
            horizon = now - self.lifetime_s
            self._issued = {t: at for t, at in self._issued.items() if at > horizon}
        token = secrets.token_urlsafe(24)
        self._issued[token] = now
        self.issued_total += 1
        return token

    def valid(self, token: str, now: float) -> bool:
        """True if `token` was issued here, has not expired and was not revoked."""
        issued = self._issued.get(token)
        if issued is None:
            return False
        if now >= issued + self.lifetime_s:
            return False
        return not any(issued < at <= now for at in self._revoke_at)


def credentials_match(
    client_id: str, secret: str, *, expected_id: str, expected_secret: SecretStr | None
) -> bool:
    """Compare Basic credentials in constant time; no expected secret is "open" mode."""
    id_ok = hmac.compare_digest(client_id.encode(), expected_id.encode())
    if expected_secret is None:
        return id_ok
    secret_ok = hmac.compare_digest(secret.encode(), expected_secret.get_secret_value().encode())
    return id_ok and secret_ok
