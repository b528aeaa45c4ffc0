"""The bounded memory of recently touched keys."""

import pytest
from wem_der.send.recent import Recent


def test_keeps_only_the_newest_keys() -> None:
    """Past maxlen, the key touched longest ago falls out; touching a key renews it."""
    recent: Recent[str, int] = Recent(2)
    recent["a"] = 1
    recent["b"] = 2
    recent["a"] = 3  # "a" is now the newest
    recent["c"] = 4
    assert "b" not in recent
    assert recent.get("a") == 3
    assert recent.get("c") == 4
    assert recent.get("b") is None
    assert len(recent) == 2


def test_refuses_a_useless_size() -> None:
    """A memory of nothing is a mistake, not a setting."""
    with pytest.raises(ValueError, match="maxlen"):
        Recent[str, int](0)
