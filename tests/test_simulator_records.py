"""Server-maintained fields and the rule table, as pure functions."""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable

import pytest
from wem_der.simulator.records import installation_stage, stamp_installation
from wem_der.simulator.rules import RuleTable
from wem_der.simulator.store import IdKind
from wem_der.simulator.testing import sample_installation

DAY1 = "2025-01-01T10:00:00+08:00"
DAY2 = "2025-01-02T10:00:00+08:00"


def ids() -> Callable[[IdKind], int]:
    """A fresh id source, as the store's `next_id`."""
    counters: dict[IdKind, itertools.count[int]] = {}

    def next_id(kind: IdKind) -> int:
        return next(counters.setdefault(kind, itertools.count(1)))

    return next_id


def test_update_keeps_creation_and_confirmation_dates() -> None:
    """A matched connection keeps its id, creation and first confirmation dates."""
    next_id = ids()
    first = stamp_installation(sample_installation(), None, [], next_id, DAY1)
    second = stamp_installation(
        sample_installation(jobNumber="J2"),
        first.record,
        [],
        next_id,
        DAY2,
    )
    [conn] = second.record["acConnections"]
    assert conn["connectionId"] == first.record["acConnections"][0]["connectionId"]
    assert conn["recordCreationDate"] == DAY1
    assert conn["recordUpdateDate"] == DAY2
    assert conn["recordConfirmedDate"] == DAY1
    assert second.record["recordCreationDate"] == DAY1
    assert second.record["recordUpdateDate"] == DAY2
    assert installation_stage(second.record) == "Confirmed"


def test_conditional_then_confirmed_gets_a_new_confirmation_date() -> None:
    """A part that was Conditional is confirmed at the update that clears it."""
    next_id = ids()
    table = RuleTable.from_file()
    flagged = sample_installation(exportLimitkW=99)
    first = stamp_installation(flagged, None, table.findings(flagged), next_id, DAY1)
    assert installation_stage(first.record) == "Conditional"
    fixed = sample_installation()
    second = stamp_installation(fixed, first.record, table.findings(fixed), next_id, DAY2)
    assert second.record["acConnections"][0]["recordConfirmedDate"] == DAY2
    assert second.exceptions == []


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[first_level.no_such_rule]\ncode = "1"\ntitle = "t"\ndetail = "d"', "no_such_rule"),
        ('[second_level.bogus]\ncode = "2"\nname = "n"\ndetails = "d"', "bogus"),
        (
            '[first_level.nmi_exists]\ncode = "1"\ntitle = "t"\ndetail = "{path}"',
            "template uses ['path']",
        ),
    ],
    ids=["unknown-first", "unknown-second", "bad-template"],
)
def test_rule_table_errors_surface_at_load(toml: str, message: str) -> None:
    """A rule without a check, or a template naming a value never yielded, fails at load."""
    with pytest.raises(ValueError, match=re.escape(message)):
        RuleTable(tomllib.loads(toml))
