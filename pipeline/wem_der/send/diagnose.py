"""What a transport failure most likely means, when nothing has answered since the first
request: said once, where the breaker opens (send/breaker.py), instead of leaving an
operator to read a run of dropped connections.

A failure that follows answers is the register's weather; one that has met every request
from the first is nearly always the set-up. Under TLS 1.3 a server checks the client
certificate after the handshake, and refusing it, just closes the connection: the client
reads a bare end of stream, the same as a server gone away. So a connection closed
without an answer over https, with no client certificate set, names --client-cert first.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from wem_der.send.retry import TokenUnavailable


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What the run knows of its connection: the register's URL and whether a client
    certificate is set."""

    url: str
    client_cert: bool

    def __call__(self, exc: BaseException) -> str | None:
        """The likely cause of `exc`, and what to check; None when nothing is likelier
        than the register being down."""
        where = urlsplit(self.url)
        host = where.hostname or self.url
        tls = where.scheme == "https"
        if isinstance(exc, TokenUnavailable):
            return f"{exc}: check --token-url, the network and any proxy or firewall"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"the host name {host} does not resolve: check --base-url and the DNS"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return (
                f"nothing accepted a connection to {host}:{where.port or (443 if tls else 80)}:"
                " check --base-url, the network and any proxy or firewall"
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and tls:
            if not self.client_cert:
                return (
                    "the connection was dropped during or just after the TLS handshake, as a"
                    " register that wants a client certificate drops it: is --client-cert set?"
                )
            return (
                "the connection was dropped during or just after the TLS handshake, as a"
                " register that refuses the client certificate drops it: check that"
                " --client-cert and --client-key are the pair AEMO registered, and unexpired"
            )
        if isinstance(exc, TimeoutError):
            return (
                "no request has had an answer within --timeout-s: a firewall may be dropping"
                " the packets, or --base-url names the wrong host"
            )
        return None
