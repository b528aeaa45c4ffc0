"""The public Python API (`wem_der.submit`, `resume`, `resubmit`, `validate`), as a
scheduler's task calls it: against the simulator on loopback, with no argparse in sight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import wem_der
from wem_der import (
    ConfigError,
    CredentialsRefused,
    InputError,
    LedgerError,
    OutputError,
    RunResult,
    SeveralErrors,
    Summary,
    ValidationResult,
)
from wem_der.errors import one_error
from wem_der.simulator import Simulator

from tests.e2e import (
    CLIENT_ID,
    PARTICIPANT,
    SECRET,
    read_summary,
    records,
    sim_settings,
    write_jsonl,
)

TIMEOUT_S = 60
PHASES = 4  # installedPhasesCount 3 > availablePhasesCount 1: rejected by the register
UNKNOWN_FIELD = 5  # a field the record shapes do not know: invalid, never sent


@pytest.fixture(autouse=True)
def no_wemder_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's own WEMDER_* settings must not reach a test's run."""
    for name in os.environ:
        if name.startswith("WEMDER_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def register() -> AsyncIterator[Simulator]:
    """A simulator on loopback that expects tests.e2e's client id and secret."""
    async with Simulator(sim_settings()) as sim:
        yield sim


def aimed_at(sim: Simulator, tmp_path: Path) -> dict[str, Any]:
    """The keywords that point a run at `sim`, with its ledger in `tmp_path/state`."""
    return {
        "base_url": sim.installation_url,
        "nmi_base_url": sim.nmi_url,
        "token_url": sim.token_url,
        "client_id": CLIENT_ID,
        "participant_id": PARTICIPANT,
        "state_dir": tmp_path / "state",
    }


def mixed_batch() -> list[dict[str, Any]]:
    """Six records: four the register accepts, one it rejects, one pre-flight refuses."""
    batch = records(6, seed=12, start=900)
    batch[PHASES]["installedPhasesCount"] = 3
    batch[UNKNOWN_FIELD]["exportLimitKW"] = 5
    return batch


async def test_submit_returns_a_typed_summary_with_the_run_s_counts(tmp_path: Path) -> None:
    """Against the embedded simulator (the default profile), submit returns the run's
    counts as attributes, and summary.json holds the same figures under the same names."""
    inputs = write_jsonl(tmp_path / "in.jsonl", mixed_batch())
    async with asyncio.timeout(TIMEOUT_S):
        result = await wem_der.submit([inputs], out=tmp_path / "out", state_dir=tmp_path / "st")

    assert isinstance(result, RunResult)
    assert isinstance(result.summary, Summary)
    summary = result.summary
    assert (summary.records, summary.accepted, summary.rejected, summary.invalid) == (6, 4, 1, 1)
    assert (summary.conditional, summary.failed, summary.skipped) == (0, 0, 0)
    # Five writes, and one search of the register (the default plan) before them.
    assert (summary.status, summary.requests, summary.http_429) == ("finished", 6, 0)
    assert summary.requests_by_status == {"200": 5, "422": 1}
    assert result.exit_code == 1  # a rejected and an invalid record
    assert result.out_dir == tmp_path / "out"
    assert result.run_id == summary.run_id
    assert read_summary(result.out_dir) == summary.as_json()
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.accepted = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    ("keyword", "environment", "used"),
    [
        ("2400/60s", "1200/60s", "2400/60s"),
        (None, "1200/60s", "1200/60s"),
        (None, None, "600/60s"),
    ],
)
async def test_a_keyword_beats_the_environment_which_beats_the_profile(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keyword: str | None,
    environment: str | None,
    used: str,
) -> None:
    """The same precedence as the command line's: keyword > WEMDER_* > profile."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "site.toml").write_text('embedded_simulator = true\nrate_limit = "600/60s"\n')
    if environment is not None:
        monkeypatch.setenv("WEMDER_RATE_LIMIT", environment)
    inputs = write_jsonl(tmp_path / "in.jsonl", records(2, seed=13, start=950))
    given: dict[str, Any] = {} if keyword is None else {"rate_limit": keyword}
    async with asyncio.timeout(TIMEOUT_S):
        result = await wem_der.submit(
            [inputs],
            out=tmp_path / "out",
            env="site",
            config_dir=profiles,
            state_dir=tmp_path / "state",
            **given,
        )

    assert result.summary.rate_limit == used
    assert (result.summary.accepted, result.exit_code) == (2, 0)


async def test_an_abort_raises_its_own_error_and_resume_finishes_the_run(
    tmp_path: Path, register: Simulator
) -> None:
    """Refused credentials raise CredentialsRefused (no ExceptionGroup, no SystemExit),
    naming the run; `resume` with the right secret, given the run's id alone, sends it all."""
    wrong = "not-" + SECRET
    inputs = write_jsonl(tmp_path / "in.jsonl", records(5, seed=14, start=960))
    out = tmp_path / "out"
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(CredentialsRefused) as refused:
            await wem_der.submit(
                [inputs], out=out, client_secret=wrong, **aimed_at(register, tmp_path)
            )
        run_id = refused.value.run_id
        aborted = read_summary(out)
        resumed = await wem_der.resume(
            str(run_id), client_secret=SECRET, state_dir=tmp_path / "state"
        )

    assert "refused the client credentials" in str(refused.value)
    assert wrong not in str(refused.value)
    assert run_id == orjson.loads((out / "run.json").read_bytes())["run_id"]
    assert (aborted["status"], aborted["not_sent"]) == ("aborted", 5)
    assert (resumed.run_id, resumed.out_dir, resumed.exit_code) == (run_id, out, 0)
    assert (resumed.summary.status, resumed.summary.accepted) == ("finished", 5)
    assert register.store.counts()["installations"] == 5


async def test_resubmit_sends_the_corrected_version_of_the_chosen_records(
    tmp_path: Path, register: Simulator
) -> None:
    """resubmit takes `only` and `with_` as the command takes --only and --with, and the
    run's own settings: only the secret is given again."""
    batch = mixed_batch()
    inputs = write_jsonl(tmp_path / "in.jsonl", batch)
    fixed = dict(batch[PHASES], installedPhasesCount=1)
    corrections = write_jsonl(tmp_path / "fixed.jsonl", [fixed])
    async with asyncio.timeout(TIMEOUT_S):
        parent = await wem_der.submit(
            [inputs], out=tmp_path / "out", client_secret=SECRET, **aimed_at(register, tmp_path)
        )
        again = await wem_der.resubmit(
            parent.out_dir,
            only=["rejected"],
            with_=corrections,
            out=tmp_path / "again",
            client_secret=SECRET,
        )

    assert parent.summary.rejected == 1
    assert (again.summary.records, again.summary.accepted, again.exit_code) == (1, 1, 0)
    assert again.out_dir == tmp_path / "again"
    sent = orjson.loads((again.out_dir / "accepted.jsonl").read_bytes())
    assert (sent["nmi"], sent["previous_run_id"]) == (fixed["nmi"], parent.run_id)


async def test_an_error_inside_the_run_s_tasks_is_raised_alone(
    tmp_path: Path, register: Simulator
) -> None:
    """An input that no longer holds what the earlier run sent fails inside the run's task
    group; the caller gets the InputError itself, not an ExceptionGroup."""
    batch = records(3, seed=15, start=980)
    inputs = write_jsonl(tmp_path / "in.jsonl", batch)
    async with asyncio.timeout(TIMEOUT_S):
        parent = await wem_der.submit(
            [inputs], out=tmp_path / "out", client_secret=SECRET, **aimed_at(register, tmp_path)
        )
        # Another NMI of the same length, size and time kept: the change is not seen until
        # the record is read.
        before = inputs.stat()
        old, new = batch[1]["nmi"], batch[1]["nmi"][::-1]
        inputs.write_bytes(inputs.read_bytes().replace(old.encode(), new.encode()))
        os.utime(inputs, ns=(before.st_atime_ns, before.st_mtime_ns))
        with pytest.raises(InputError) as changed:
            await wem_der.resubmit(
                parent.run_id, only="accepted", client_secret=SECRET, state_dir=tmp_path / "state"
            )

    assert f"holds NMI {new!r}, but run {parent.run_id} sent NMI {old!r}" in str(changed.value)
    assert isinstance(changed.value.__cause__, ExceptionGroup)


async def test_validate_counts_without_sending(tmp_path: Path) -> None:
    """validate pre-flights the records and returns typed counts and the exit code."""
    inputs = write_jsonl(tmp_path / "in.jsonl", mixed_batch())
    async with asyncio.timeout(TIMEOUT_S):
        found = await wem_der.validate([str(inputs)])
        allowed = await wem_der.validate([inputs], allow_unknown_fields=True)

    assert found == ValidationResult(records=6, valid=5, invalid=1)
    assert found.exit_code == 1
    assert (allowed.invalid, allowed.exit_code) == (0, 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            # Each call is also a type error: mypy finds these in a caller's code.
            lambda tmp: wem_der.submit(
                [tmp / "in.jsonl"],
                out=tmp / "out",
                concurency=2,  # type: ignore[call-arg]
            ),
            "submit() got an unknown keyword 'concurency'; did you mean 'concurrency'?",
        ),
        (
            lambda tmp: wem_der.resubmit(tmp / "out", **{"with": tmp / "fixed.jsonl"}),
            "resubmit() got an unknown keyword 'with'; did you mean 'with_'?",
        ),
        (
            lambda tmp: wem_der.validate(
                [tmp / "in.jsonl"],
                base_url="https://example.test",  # type: ignore[call-arg]
            ),
            "validate() got an unknown keyword 'base_url'",
        ),
        (
            lambda tmp: wem_der.submit(
                [tmp / "in.jsonl"],
                out=tmp / "out",
                kind="nmis",  # type: ignore[arg-type]
            ),
            "--kind: unknown kind 'nmis'; the kinds are installation, nmi",
        ),
        (
            lambda tmp: wem_der.validate("in.jsonl"),
            "paths: give a list of paths, such as ['in.jsonl'], not one path",
        ),
    ],
)
async def test_a_wrong_keyword_is_a_config_error_before_anything_starts(
    tmp_path: Path, call: Any, message: str
) -> None:
    """A keyword the function does not take, or a value it cannot use, raises ConfigError
    naming it (never argparse's SystemExit), and nothing is written."""
    write_jsonl(tmp_path / "in.jsonl", records(1))
    with pytest.raises(ConfigError) as refused:
        await call(tmp_path)

    assert str(refused.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# -- errors raised together ------------------------------------------------------------------


def test_one_error_of_a_group_is_that_error() -> None:
    inner = OutputError("disk full")
    group = ExceptionGroup("run", [ExceptionGroup("stage", [inner])])
    assert one_error(group) is inner


def test_several_errors_of_a_group_are_one_error_naming_them() -> None:
    """The first stopped the others, so its exit code is the run's."""
    first, second = CredentialsRefused("refused"), LedgerError("locked")
    found = one_error(ExceptionGroup("run", [first, ExceptionGroup("stage", [second])]))
    assert isinstance(found, SeveralErrors)
    assert (found.errors, found.exit_code) == ((first, second), 3)
    assert str(found) == "2 errors: refused; locked"


def test_a_group_holding_a_bug_is_left_as_it_is() -> None:
    assert one_error(ExceptionGroup("run", [OutputError("full"), KeyError("bug")])) is None
