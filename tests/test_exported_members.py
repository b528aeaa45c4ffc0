"""What `import wem_der` offers is a decision: `__all__` is exactly these names, each one
resolves, and nothing else public sits at the top of the package."""

from __future__ import annotations

from types import ModuleType

import wem_der

EXPORTED = [
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


def test_all_is_the_chosen_names_in_order() -> None:
    assert wem_der.__all__ == EXPORTED == sorted(EXPORTED)


def test_every_exported_name_resolves_to_its_implementation() -> None:
    """Including those imported on first use (run/api.py, run/results.py)."""
    from wem_der.errors import WemDerError
    from wem_der.register import export, followup, verify
    from wem_der.run import api, results

    assert wem_der.submit is api.submit
    assert wem_der.validate is api.validate
    assert wem_der.verify is api.verify
    assert wem_der.export is api.export
    assert wem_der.followup is api.followup
    assert wem_der.FollowupResult is followup.FollowupResult
    assert wem_der.VerifyResult is verify.VerifyResult
    assert wem_der.ExportResult is export.ExportResult
    assert wem_der.Summary is results.Summary
    assert wem_der.WemDerError is WemDerError
    namespace: dict[str, object] = {}
    exec("from wem_der import *", namespace)  # the star import users may write
    assert sorted(name for name in namespace if name != "__builtins__") == EXPORTED


def test_nothing_else_public_at_the_top() -> None:
    """Sub-packages and modules are reached by their own names, not exported."""
    public = {
        name
        for name, value in vars(wem_der).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public <= set(EXPORTED)


def test_every_exported_exception_is_a_wem_der_error() -> None:
    """One drawn tree (errors.py): a caller catches WemDerError and has them all."""
    values = [getattr(wem_der, name) for name in EXPORTED]
    errors = [value for value in values if isinstance(value, type)]
    errors = [value for value in errors if issubclass(value, BaseException)]
    assert len(errors) == 10
    assert all(issubclass(error, wem_der.WemDerError) for error in errors)
