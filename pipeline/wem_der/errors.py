"""The exception tree. Expected API answers are outcomes, not exceptions (see records/outcomes.py).

    WemDerError                       anything the tool raises on purpose
    ├── ConfigError                   bad flag, keyword, profile or environment (exit 2)
    ├── InputError                    an input path that cannot be read at all (exit 2)
    ├── RunAborted                    the run stopped; what was done is recorded (exit 3)
    │   ├── CredentialsRefused        the token endpoint refused the client credentials
    │   ├── Misconfigured             405/411/415, a wrong-URL 404, a 2xx not JSON, 403s
    │   ├── SearchFailed              a page of a search could not be read (an export)
    │   ├── QuotaStoreLost            the shared quota's Redis stopped answering
    │   └── StoppedAtOnce             a second Ctrl-C: nothing waited for
    ├── LedgerError                   the state database is corrupt, locked or unwritable
    ├── OutputError                   an outcome file cannot be written (a full disk)
    └── SeveralErrors                 more than one of these at once, in `errors`

Messages say what was wrong and how to fix it, and never carry a secret. The library
raises these and nothing else on purpose: tasks of a run that fail together reach the
caller as their one error, or as `SeveralErrors`, never as an `ExceptionGroup`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence


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
    """The run stopped before the end; every finished record is on disk.

    `run_id` names the run that `resume` finishes, once the run has one.
    """

    exit_code = 3
    run_id: str | None = None


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


class SearchFailed(RunAborted):
    """A page of the register's search could not be read, its retries spent or refused:
    what needs every page (an export) cannot finish."""


class StoppedAtOnce(RunAborted):
    """A second Ctrl-C (or SIGTERM) cancelled the run without waiting for the wire."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        # Writes that were on the wire stay in flight in the ledger: resume reads them back.
        super().__init__(
            f"stopped at once; requests on the wire may have landed: `wem-der resume {run_id}`"
            " reads them back and finishes the run"
        )


class QuotaStoreLost(RunAborted):
    """The Redis that holds the shared quota did not answer for too long: sending on
    without it would put requests into the quota that the other jobs cannot count."""

    def __init__(self, store: str, waited_s: float) -> None:
        super().__init__(
            f"the quota store {store} did not answer for {waited_s:g} s; the run stopped"
            " rather than send requests the other jobs could not count: once it answers,"
            " `wem-der resume` finishes the run"
        )


class LedgerError(WemDerError):
    """The ledger database cannot be used (corrupt, locked by another run, unwritable)."""

    exit_code = 2


class OutputError(WemDerError):
    """An outcome file cannot be written (a full disk, say); the ledger holds every outcome."""

    exit_code = 2


class SeveralErrors(WemDerError):
    """Errors raised together by the tasks of one run, each in `errors`.

    The first is the one that stopped the others (a task group cancels the rest when one
    fails), so it sets the exit code; the message names them all.
    """

    def __init__(self, errors: Sequence[WemDerError]) -> None:
        self.errors = tuple(errors)
        self.exit_code = self.errors[0].exit_code
        super().__init__(f"{len(self.errors)} errors: " + "; ".join(map(str, self.errors)))


def one_error(group: BaseExceptionGroup[BaseException]) -> WemDerError | None:
    """The error a task group's `group` stands for: its only `WemDerError`, or
    `SeveralErrors` of them; None when it holds anything else (a bug, whose traceback the
    group keeps)."""
    matched, rest = group.split(WemDerError)
    if matched is None or rest is not None:
        return None
    errors = list(_leaves(matched))
    return errors[0] if len(errors) == 1 else SeveralErrors(errors)


@contextlib.contextmanager
def own_errors() -> Iterator[None]:
    """Errors that a run's tasks raise together, as the one error they stand for (see
    `one_error`); a group holding anything else is a bug, and is left as it is."""
    try:
        yield
    except BaseExceptionGroup as group:
        error = one_error(group)
        if error is None:
            raise
        raise error from group


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[WemDerError]:
    found: list[WemDerError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        elif isinstance(exc, WemDerError):
            found.append(exc)
    return found
