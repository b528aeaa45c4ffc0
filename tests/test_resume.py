"""kill -9 at any moment, `wem-der resume`, and the register holds every record exactly once.

The simulator runs in its own process with a SQLite store and drops 10 % of answers after
applying the request ("applied then dropped"), so every run has creates whose fate it does
not know. `wem-der` runs as a subprocess that the test SIGKILLs after some outcomes have
appeared, then resumes; the simulator's own counters and records are the judge.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.ledger.store import Ledger
from wem_der.records.samples import installations
from wem_der.send.reconcile import register_holds

from tests.e2e import assert_each_once, lines_of, read_summary, write_jsonl
from tests.leaks import Secrets, assert_nothing_leaked, files_under
from tests.processes import (
    CLIENT_ID,
    SECRET,
    Sim,
    has_lines,
    kill9,
    outcome_lines,
    run_id_of,
    simulator,
    start,
    stop,
    wait_until,
    wem_der,
)

RECORDS = 300
LEDGER = "ledger.sqlite3"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    flags = ["--applied-then-dropped-rate", "0.1", "--latency-ms", "20", "--seed", "11"]
    with simulator(tmp_path_factory.mktemp("sim"), *flags) as running:
        yield running


def records(start_at: int, **changes: Any) -> list[dict[str, Any]]:
    out = list(installations(RECORDS, seed=start_at, start=start_at))
    for record in out:
        record.update(changes)
    return out


async def _ledger_view(state: Path, run_id: str) -> tuple[set[int], set[int]]:
    async with asyncio.timeout(10), Ledger(state / LEDGER) as ledger:
        done = {item.seq async for item in ledger.iter_run_items(run_id)}
        return done, set(await ledger.in_flight(run_id))


def ledger_view(state: Path, run_id: str) -> tuple[set[int], set[int]]:
    """(seqs with a final outcome, seqs with a write in flight) of a run, from its ledger."""
    return asyncio.run(_ledger_view(state, run_id))


def says(log: Path, text: str) -> bool:
    return text in log.read_text()


def resume_args(ref: str, sim: Sim) -> list[str]:
    # Only the secret: endpoints, participant and state directory come from the run.
    return ["resume", ref, "--client-secret-file", str(sim.secret_file), "--no-progress"]


def kill_and_resume(
    *,
    sim: Sim,
    first: list[str],
    out: Path,
    state: Path,
    logs: Path,
    kill_points: list[int | str],
) -> tuple[str, int]:
    """Start `first`, SIGKILL it at each point, resume; return (run id, in flight at kills).

    A point is a number of outcome lines, or "run.json" (killed as soon as the run has an
    id, before it recorded anything). Resumes name the run by its directory (no flag but
    the secret), by its id (and the state directory), or by its id followed by the whole
    submit command line.
    """
    proc = start(*first, log=logs / "run-0.log")
    try:
        in_flight = 0
        run_id = ""
        for n, point in enumerate(kill_points):
            if point == "run.json":
                wait_until(proc, (out / "run.json").exists, timeout_s=30, what="run.json")
            else:
                wait_until(
                    proc,
                    partial(has_lines, out, int(point)),
                    timeout_s=30,
                    what=f"{point} outcomes",
                )
            assert proc.poll() is None, (
                f"the run ended before kill point {point}:\n{(logs / f'run-{n}.log').read_text()}"
                f"\n{[line for line in outcome_lines(out) if line['outcome'] != 'accepted']}"
            )
            kill9(proc)
            run_id = run_id_of(out)
            if point != "run.json":
                in_flight += len(ledger_view(state, run_id)[1])
            log = logs / f"run-{n + 1}.log"
            if n % 3 == 0:
                args = resume_args(str(out), sim)
            elif n % 3 == 1:
                args = [*resume_args(run_id, sim), "--state-dir", str(state)]
            else:  # what a script does: the submit command line, with resume and the id
                args = ["resume", run_id, *first[1:]]
            proc = start(*args, log=log)
            # The resumed run has rebuilt its outcome files from the ledger once it prints its
            # id; counting lines before that would count the killed run's.
            wait_until(
                proc,
                partial(says, log, "outcomes in"),
                timeout_s=30,
                what="the resumed run to start",
            )
        assert proc.wait(timeout=60) == 0, (logs / f"run-{len(kill_points)}.log").read_text()
    finally:
        stop(proc)
    return run_id, in_flight


def assert_every_input_once(out: Path, inputs: Path, run_id: str, action: str) -> None:
    """Each input line has exactly one outcome line, accepted, and no "not sent" is left."""
    found = assert_each_once(out, lines_of(inputs, RECORDS))
    lines = found["accepted"]
    assert len(lines) == RECORDS  # so every other outcome file is empty
    assert {line["run_id"] for line in lines} == {run_id}
    assert {line["action"] for line in lines} == {action}
    assert not [line for line in lines if "not sent" in (line["reason"] or "")]
    summary = read_summary(out)
    assert (summary["status"], summary["records"], summary["accepted"]) == (
        "finished",
        RECORDS,
        RECORDS,
    )


def assert_register_holds(sim: Sim, sent: list[dict[str, Any]]) -> None:
    """The register holds each NMI once, with the content last sent for it."""
    stored = sim.installations()
    by_nmi = Counter(record["nmi"] for record in stored)
    assert max(by_nmi.values()) == 1
    assert set(by_nmi) == {record["nmi"] for record in sent}
    current = {record["nmi"]: record for record in stored}
    assert [r["nmi"] for r in sent if not register_holds(current[r["nmi"]], r)] == []


def assert_no_secret(*places: Path) -> None:
    """The client secret, plain or inside Basic credentials, is in no file below `places`.

    The tokens are the simulator process's own, out of this process's reach.
    """
    written = files_under(*places)
    assert_nothing_leaked(Secrets(CLIENT_ID, SECRET), written, must_include=LEDGER)


@pytest.mark.parametrize(
    "kill_points",
    [
        pytest.param(["run.json", 40, 150], id="at-start-then-early-then-middle"),
        pytest.param([90, 170, 230], id="three-times-later"),
    ],
)
def test_repeated_kill9_and_resume_create_every_record_exactly_once(
    register: Sim, tmp_path: Path, kill_points: list[int | str]
) -> None:
    """No create is sent twice, none is lost, every input ends in one outcome line."""
    sent = records(0)
    inputs = write_jsonl(tmp_path / "nightly.jsonl", sent)
    out, state, logs = tmp_path / "out", tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    first = ["submit", str(inputs), "--out", str(out), *register.flags(state)]

    run_id, in_flight = kill_and_resume(
        sim=register, first=first, out=out, state=state, logs=logs, kill_points=kill_points
    )

    stats = register.stats()
    assert stats["applied_then_dropped"] > 0  # the runs did meet answers lost after the fact
    assert stats["creates_refused_existing"] == 0  # no create was ever sent a second time
    assert stats["duplicate_creates"] == 0
    # One stored version per NMI: no write was repeated, not even as an update.
    assert (stats["installations"], stats["installation_versions"]) == (RECORDS, RECORDS)
    assert_register_holds(register, sent)
    assert_every_input_once(out, inputs, run_id, "create")
    done, still_in_flight = ledger_view(state, run_id)
    assert (done, still_in_flight) == (set(range(RECORDS)), set())
    # The kills caught writes on the wire, and the resumes read them back.
    assert in_flight > 0
    assert read_summary(out)["reconciliations"] > 0
    assert_no_secret(out, state, logs)


def test_kill9_during_updates_never_turns_an_update_into_a_create(
    register: Sim, tmp_path: Path
) -> None:
    """Records already at the register stay updates through kills; each ends as sent."""
    inputs = write_jsonl(tmp_path / "v1.jsonl", records(1000))
    state, logs = tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    done = wem_der("submit", str(inputs), "--out", str(tmp_path / "v1"), *register.flags(state))
    assert done.code == 0, done.output
    creates_before = register.stats()["requests"]["installation.create"]

    changed = records(1000, jobNumber="JOB-REVISED", exportLimitkW=1.5)
    inputs = write_jsonl(tmp_path / "v2.jsonl", changed)
    out = tmp_path / "v2"
    first = ["submit", str(inputs), "--out", str(out), *register.flags(state)]
    run_id, _ = kill_and_resume(
        sim=register, first=first, out=out, state=state, logs=logs, kill_points=[60, 180]
    )

    stats = register.stats()
    assert stats["requests"]["installation.create"] == creates_before
    assert stats["creates_refused_existing"] == 0
    assert stats["installations"] == RECORDS
    assert_register_holds(register, changed)
    assert_every_input_once(out, inputs, run_id, "update")


def test_resuming_a_finished_run_sends_nothing(register: Sim, tmp_path: Path) -> None:
    """A finished run is not sent again on resume; a resume into another --out is refused."""
    inputs = write_jsonl(tmp_path / "in.jsonl", records(2000)[:20])
    out, state = tmp_path / "out", tmp_path / "state"
    assert wem_der("submit", str(inputs), "--out", str(out), *register.flags(state)).code == 0
    before = register.stats()["der_requests_received"]

    again = wem_der(*resume_args(str(out), register))
    elsewhere = wem_der(*resume_args(str(out), register), "--out", str(tmp_path / "other"))

    assert again.code == 0, again.output
    assert register.stats()["der_requests_received"] == before
    # The summary counts the whole run: the 20 writes of the first process, none since.
    assert read_summary(out)["requests"] == 20
    assert len(outcome_lines(out)) == 20
    assert elsewhere.code == 2
    assert f"was started with --out {out}; a resume continues it as it was" in elsewhere.stderr
    assert not (tmp_path / "other").exists()


def test_resume_is_refused_while_the_run_is_live(register: Sim, tmp_path: Path) -> None:
    """Two processes never send the same run: a resume of a locked run exits 2, sending nothing."""
    inputs = write_jsonl(tmp_path / "in.jsonl", records(3000)[:5])
    out, state = tmp_path / "out", tmp_path / "state"
    assert wem_der("submit", str(inputs), "--out", str(out), *register.flags(state)).code == 0
    before = register.stats()["der_requests_received"]

    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the live run's process holds it
        refused = wem_der(*resume_args(str(out), register))
    finally:
        os.close(fd)

    assert refused.code == 2
    assert "is in use by a run live in another process" in refused.stderr
    assert "Traceback" not in refused.output
    assert register.stats()["der_requests_received"] == before


def test_resume_refuses_an_input_that_changed(register: Sim, tmp_path: Path) -> None:
    """Records are named by position, so a changed input cannot be resumed from."""
    sent = records(4000)[:10]
    inputs = write_jsonl(tmp_path / "in.jsonl", sent)
    out, state = tmp_path / "out", tmp_path / "state"
    assert wem_der("submit", str(inputs), "--out", str(out), *register.flags(state)).code == 0
    before = register.stats()["der_requests_received"]
    random.Random(1).shuffle(sent)
    write_jsonl(inputs, sent)

    refused = wem_der(*resume_args(str(out), register))

    assert refused.code == 2
    assert "changed since run" in refused.stderr
    assert register.stats()["der_requests_received"] == before


def test_resume_of_an_unknown_run_says_so(tmp_path: Path) -> None:
    """An id the ledger does not hold, or no ledger at all, is a clear exit 2."""
    nowhere = wem_der("resume", "20990101T000000Z-abcdef", "--state-dir", str(tmp_path / "s"))
    assert nowhere.code == 2
    assert "no ledger at" in nowhere.stderr
    assert not (tmp_path / "s").exists()  # looking did not create an empty ledger


def test_a_new_run_replaces_a_finished_runs_files_and_says_so(
    register: Sim, tmp_path: Path
) -> None:
    """A finished run's outcomes stay in the ledger; only its files make way, with a note,
    and it can no longer be resumed into the directory that another run now holds."""
    out, state = tmp_path / "out", tmp_path / "state"
    first = write_jsonl(tmp_path / "first.jsonl", records(5000)[:6])
    second = write_jsonl(tmp_path / "second.jsonl", records(6000)[:4])
    assert wem_der("submit", str(first), "--out", str(out), *register.flags(state)).code == 0
    first_id = run_id_of(out)

    replaced = wem_der("submit", str(second), "--out", str(out), *register.flags(state))
    report = wem_der("report", first_id, "--state-dir", str(state), "--format", "json")
    resumed = wem_der(*resume_args(first_id, register), "--state-dir", str(state))

    assert replaced.code == 0, replaced.output
    assert (
        f"note: {out} held run {first_id} (finished): its outcome files are replaced"
        in replaced.stderr
    )
    assert run_id_of(out) != first_id
    assert len(outcome_lines(out)) == 4
    assert report.code == 0, report.output
    assert sum(orjson.loads(report.stdout)["outcomes"].values()) == 6
    assert resumed.code == 2
    assert f"now holds run {run_id_of(out)}, so run {first_id} cannot go on there" in (
        resumed.stderr
    )
    assert len(outcome_lines(out)) == 4


def test_a_new_run_is_refused_the_directory_of_a_killed_run(register: Sim, tmp_path: Path) -> None:
    """`submit` again where a run was killed would hide that run from `resume DIR` and drop
    its files: it is refused, touching nothing, and the resume it names finishes the run."""
    inputs = write_jsonl(tmp_path / "in.jsonl", records(7000))
    out, state = tmp_path / "out", tmp_path / "state"
    submit_args = ["submit", str(inputs), "--out", str(out), *register.flags(state)]
    proc = start(*submit_args, "--rate-limit", "50/1s", log=tmp_path / "run.log")
    try:
        wait_until(proc, partial(has_lines, out, 1), timeout_s=30, what="a first outcome")
        kill9(proc)
    finally:
        stop(proc)
    killed_id = run_id_of(out)
    lines = outcome_lines(out)
    before = register.stats()["der_requests_received"]

    refused = wem_der(*submit_args)

    assert refused.code == 2
    assert (
        f"holds run {killed_id}, which did not finish (killed, stopped at once or by an error):"
        f" `wem-der resume {killed_id}` finishes it there; to start a new run, choose another"
        " --out"
    ) in refused.stderr
    assert "Traceback" not in refused.output
    assert register.stats()["der_requests_received"] == before
    assert run_id_of(out) == killed_id
    assert outcome_lines(out) == lines
    finished = wem_der(*resume_args(str(out), register))
    assert finished.code == 0, finished.output
    assert_every_input_once(out, inputs, killed_id, "create")


def test_a_run_this_ledger_does_not_know_keeps_its_directory(register: Sim, tmp_path: Path) -> None:
    """A directory whose run.json names a run of another ledger is not taken over blind."""
    inputs = write_jsonl(tmp_path / "in.jsonl", records(8000)[:3])
    out = tmp_path / "out"
    submit_args = ["submit", str(inputs), "--out", str(out)]
    assert wem_der(*submit_args, *register.flags(tmp_path / "one")).code == 0
    first_id = run_id_of(out)

    refused = wem_der(*submit_args, *register.flags(tmp_path / "two"))

    assert refused.code == 2
    assert f"holds run {first_id}, which this ledger does not know" in refused.stderr
    assert run_id_of(out) == first_id
