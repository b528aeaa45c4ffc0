"""A ledger that is corrupt, locked or cannot be created: exit 2 with a message, no traceback.

And nothing is sent: a run that cannot record what it sends must not send.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest
from wem_der.records.samples import installations

from tests.damage import overwrite_with_garbage, tear_the_items_table
from tests.e2e import read_summary, write_jsonl
from tests.processes import (
    Result,
    Sim,
    count_lines,
    has_lines,
    outcome_lines,
    run_id_of,
    start,
    stop,
    wait_until,
    wem_der,
)

LEDGER = "ledger.sqlite3"


@pytest.fixture
def earlier_run(sim: Sim, tmp_path: Path) -> Path:
    """The outcome directory of a finished run whose ledger is `tmp_path/state`."""
    inputs = write_jsonl(tmp_path / "in.jsonl", installations(5, seed=4, start=400))
    out = tmp_path / "out"
    done = wem_der("submit", str(inputs), "--out", str(out), *sim.flags(tmp_path / "state"))
    assert done.code == 0, done.output
    return out


def command(name: str, sim: Sim, out: Path, state: Path) -> list[str]:
    secret = ["--client-secret-file", str(sim.secret_file), "--no-progress"]
    inputs = str(out.parent / "in.jsonl")
    return {
        "submit": ["submit", inputs, "--out", str(out.parent / "new"), *sim.flags(state)],
        "resume": ["resume", str(out), *secret],
        "resubmit": ["resubmit", str(out), "--only", "accepted", *secret],
        "report": ["report", run_id_of(out), "--state-dir", str(state)],
    }[name]


def assert_clean_exit_2(result: Result, message: str) -> None:
    assert result.code == 2, result.output
    assert f"wem-der: {message}" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["submit", "resume", "resubmit", "report"])
@pytest.mark.parametrize(
    ("damage", "reason"),
    [(overwrite_with_garbage, "file is not a database"), (tear_the_items_table, "malformed")],
    ids=["garbage", "torn"],
)
def test_a_damaged_ledger_is_a_clear_exit_2_and_nothing_is_sent(
    sim: Sim,
    earlier_run: Path,
    name: str,
    damage: Callable[[Path], None],
    reason: str,
) -> None:
    """Every command that opens the ledger says it is unusable, why, and what to do."""
    state = earlier_run.parent / "state"
    damage(state / LEDGER)
    received = sim.stats()["der_requests_received"]

    result = wem_der(*command(name, sim, earlier_run, state))

    assert_clean_exit_2(result, f"{state / LEDGER} is not a usable ledger")
    assert reason in result.stderr
    assert "move it aside or point --state-dir elsewhere" in result.stderr
    assert sim.stats()["der_requests_received"] == received


def test_a_ledger_locked_at_the_start_is_a_clear_exit_2(sim: Sim, earlier_run: Path) -> None:
    """Another process holding the ledger's write lock past the busy timeout: exit 2."""
    state = earlier_run.parent / "state"
    received = sim.stats()["der_requests_received"]
    with closing(sqlite3.connect(state / LEDGER, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        result = wem_der(*command("submit", sim, earlier_run, state))
        other.execute("ROLLBACK")

    assert_clean_exit_2(result, f"{state / LEDGER} is locked by another wem-der run")
    assert sim.stats()["der_requests_received"] == received


def test_a_ledger_locked_mid_run_stops_the_run_and_resume_finishes_it(
    register: Sim, tmp_path: Path
) -> None:
    """Locked while sending: exit 2, and a resume later sends every record exactly once."""
    count = 60
    inputs = write_jsonl(tmp_path / "in.jsonl", installations(count, seed=6, start=600))
    out, state = tmp_path / "out", tmp_path / "state"
    proc = start(
        "submit",
        str(inputs),
        "--out",
        str(out),
        *register.flags(state),
        "--rate-limit",
        "20/1s",  # three seconds of sending: the lock lands mid-run
        log=tmp_path / "run.log",
    )
    try:
        wait_until(proc, partial(has_lines, out, 5), timeout_s=30, what="5 outcomes")
        assert proc.poll() is None
        with closing(sqlite3.connect(state / LEDGER, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            code = proc.wait(timeout=30)
            other.execute("ROLLBACK")
    finally:
        stop(proc)
    log = (tmp_path / "run.log").read_text()
    assert code == 2, log
    assert f"wem-der: {state / LEDGER} is locked by another wem-der run" in log
    assert "Traceback" not in log
    assert count_lines(out) < count

    resumed = wem_der("resume", str(out), "--client-secret-file", str(register.secret_file))

    assert resumed.code == 0, resumed.output
    stats = register.stats()
    assert stats["creates_refused_existing"] == 0
    assert (stats["installations"], stats["installation_versions"]) == (count, count)
    lines = outcome_lines(out)
    assert Counter(line["source"]["line"] for line in lines) == Counter(range(1, count + 1))
    assert read_summary(out)["accepted"] == count


def test_a_state_dir_that_cannot_be_made_is_a_clear_exit_2(sim: Sim, tmp_path: Path) -> None:
    """--state-dir naming a file: the ledger cannot be created there."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    inputs = write_jsonl(tmp_path / "in.jsonl", installations(2, seed=1))

    result = wem_der("submit", str(inputs), "--out", str(tmp_path / "o"), *sim.flags(blocker))

    assert_clean_exit_2(result, "cannot create the ledger")
