"""wem-der-pipeline: bulk submission of records to AEMO's WEM DER Register.

    import asyncio, wem_der

    result = asyncio.run(wem_der.submit(["nightly.jsonl"], out="runs/today"))
    print(result.summary.accepted, result.exit_code)

The functions mirror the `wem-der` commands; their keywords are the commands' long options
with underscores (see run/api.py). Errors are those of errors.py, drawn there.
"""

import typing

from wem_der.errors import (
    ConfigError,
    CredentialsRefused,
    InputError,
    LedgerError,
    Misconfigured,
    OutputError,
    RunAborted,
    SeveralErrors,
    StoppedAtOnce,
    WemDerError,
)

if typing.TYPE_CHECKING:
    from wem_der.register.export import ExportResult
    from wem_der.register.followup import FollowupResult
    from wem_der.register.verify import VerifyResult
    from wem_der.run.api import export, followup, resubmit, resume, submit, validate, verify
    from wem_der.run.results import RunResult, Summary, ValidationResult

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CredentialsRefused",
    "ExportResult",
    "FollowupResult",
    "InputError",
    "LedgerError",
    "Misconfigured",
    "OutputError",
    "RunAborted",
    "RunResult",
    "SeveralErrors",
    "StoppedAtOnce",
    "Summary",
    "ValidationResult",
    "VerifyResult",
    "WemDerError",
    "__version__",
    "export",
    "followup",
    "resubmit",
    "resume",
    "submit",
    "validate",
    "verify",
]

# Imported when first used, not here: every import of a `wem_der.*` module runs this file
# first, and `wem-der --help`, `simulate` or `report` need not load what a run needs (the
# settings model, the client, the engine: about 0.2 s).
_LAZY = {
    **dict.fromkeys(
        ("export", "followup", "resubmit", "resume", "submit", "validate", "verify"),
        "wem_der.run.api",
    ),
    "ExportResult": "wem_der.register.export",
    "FollowupResult": "wem_der.register.followup",
    "VerifyResult": "wem_der.register.verify",
    **dict.fromkeys(("RunResult", "Summary", "ValidationResult"), "wem_der.run.results"),
}

if not typing.TYPE_CHECKING:
    # Hidden from type checkers, which would otherwise take any name (a misspelt one too)
    # to be an attribute of the package.

    def __getattr__(name: str) -> object:
        if name not in _LAZY:
            raise AttributeError(f"module 'wem_der' has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
