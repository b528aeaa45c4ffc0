"""The exception tree. Expected API answers are outcomes, not exceptions (see records/outcomes.py).

    WemDerError                       anything the tool raises on purpose
    ├── ConfigError                   bad flag, profile or environment (exit 2)
    ├── InputError                    an input path that cannot be read at all (exit 2)
    ├── RunAborted                    the run stopped; what was done is recorded (exit 3)
    │   ├── CredentialsRefused        the token endpoint refused the client credentials
    │   ├── Misconfigured             405/411/415, a wrong-URL 404, a 2xx not JSON, 403s
    │   └── StoppedAtOnce             a second Ctrl-C: nothing waited for
    ├── LedgerError                   the state database is corrupt, locked or unwritable
    └── OutputError                   an outcome file cannot be written (a full disk)

Messages say what was wrong and how to fix it, and never carry a secret.
"""

from __future__ import annotations


class WemDerError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code = 1


class ConfigError(WemDerError):
    """A flag, profile or environment variable is missing or wrong."""

    exit_code = 2


class InputError(WemDerError):
    """An input path cannot be read at all (missing, a directory, unreadable)."""

    exit_code = 2


class RunAborted(WemDerError):
    """The run stopped before the end; every finished record is on disk."""

    exit_code = 3


class CredentialsRefused(RunAborted):
    """The token endpoint refused the client id and secret."""


class Misconfigured(RunAborted):
    """The API says the client is set up wrongly; more requests would only burn the batch."""

    @classmethod
    def tls(cls, where: str, exc: Exception) -> Misconfigured:
        """A TLS handshake failed: a certificate one side cannot accept is set-up, not
        weather, and retrying it only delays the message that says which file to check."""
        return cls(
            f"TLS with {where} failed ({exc}); check --ca-file, --client-cert and --client-key"
        )


class StoppedAtOnce(RunAborted):
    """A second Ctrl-C (or SIGTERM) cancelled the run without waiting for the wire."""

    def __init__(self, run_id: str) -> None:
        # Writes that were on the wire stay in flight in the ledger: resume reads them back.
        super().__init__(
            f"stopped at once; requests on the wire may have landed: `wem-der resume {run_id}`"
            " reads them back and finishes the run"
        )


class LedgerError(WemDerError):
    """The ledger database cannot be used (corrupt, locked by another run, unwritable)."""

    exit_code = 2


class OutputError(WemDerError):
    """An outcome file cannot be written (a full disk, say); the ledger holds every outcome."""

    exit_code = 2
