"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

# Assertions in the end-to-end helpers explain themselves like those in test modules.
pytest.register_assert_rewrite("tests.e2e")

from tests.e2e import Tap, install_tap  # noqa: E402 - after the rewrite hook is registered


@pytest.fixture
def tap(monkeypatch: pytest.MonkeyPatch) -> Tap:
    """Every DER request that simulators started in the test receive, in arrival order."""
    return install_tap(monkeypatch)
