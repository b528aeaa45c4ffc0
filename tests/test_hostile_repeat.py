"""Inputs that repeat an NMI, night after night; and a run short of file descriptors.

A nightly export may hold a record twice, or two versions of one NMI, within a file or
across two. Once the register holds what the input says, submitting it again into a new
outcome directory (the next night) sends nothing, as for any unchanged record, and the
outcome of each line that was not sent says why, naming the line it gives way to.

`wem-der` runs as a subprocess against a simulator process, whose counters are exact; the
descriptor tests run `wem-der` (and the ledger) in a process whose RLIMIT_NOFILE is set
before it starts.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.records.samples import installations
from wem_der.run import stages as engine
from wem_der.simulator import Simulator

from tests.e2e import (
    PYTHON,
    Tap,
    clean_environ,
    read_summary,
    run_settings,
    sim_settings,
    write_jsonl,
)
from tests.e2e import submit as e2e_submit
from tests.processes import (
    RUN_TIMEOUT_S,
    Sim,
    has_lines,
    kill9,
    outcome_lines,
    simulator,
    start,
    stop,
    wait_until,
    wem_der,
)

REPO = Path(__file__).resolve().parent.parent


def night(sim: Sim, inputs: Sequence[Path], out: Path, state: Path, *extra: str) -> int:
    """One nightly `submit` of `inputs` into `out`; how many requests the register received.
    The ledger alone plans, so that they are the writes: repeats are the ledger's to skip."""
    before = int(sim.stats()["der_requests_received"])
    flags = [*sim.flags(state), "--plan", "ledger"]
    done = wem_der("submit", *map(str, inputs), "--out", str(out), *flags, *extra)
    assert done.code == 0, done.output
    assert "Traceback" not in done.output
    return int(sim.stats()["der_requests_received"]) - before


def by_line(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every outcome line of `out` by (input file name, line); each line once."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for line in outcome_lines(out):
        key = (Path(line["source"]["path"]).name, line["source"]["line"])
        assert key not in found, f"{key} has two outcomes"
        found[key] = line
    return found


def stored(sim: Sim, nmi: str) -> dict[str, Any]:
    """The version of `nmi` the register holds."""
    [record] = [record for record in sim.installations() if record["nmi"] == nmi]
    return record


def versions(sim: Sim) -> int:
    return int(sim.stats()["installation_versions"])


def test_a_record_given_twice_is_sent_once_and_never_again(register: Sim, tmp_path: Path) -> None:
    """Line 2 again on lines 4 and 6: one write the first night, none on the next two, and
    each repeat says which line it duplicates."""
    a, b, c, d = installations(4, seed=3, start=100)
    path = write_jsonl(tmp_path / "nightly.jsonl", [a, b, c, b, d, b])
    state = tmp_path / "state"
    for n, name in enumerate(["mon", "tue", "wed"]):
        sent = night(register, [path], tmp_path / name, state)

        assert sent == (4 if n == 0 else 0)
        assert versions(register) == 4  # the register gained no version after the first
        found = by_line(tmp_path / name)
        for repeat in (4, 6):
            line = found[("nightly.jsonl", repeat)]
            assert line["outcome"] == "skipped"
            assert f"duplicates line 2 of {path}" in line["reason"]
        first = found[("nightly.jsonl", 2)]
        assert first["outcome"] == ("accepted" if n == 0 else "skipped")
        assert read_summary(tmp_path / name)["skipped"] == (2 if n == 0 else 6)


def test_two_versions_of_an_nmi_cost_nothing_once_the_register_holds_the_later(
    register: Sim, tmp_path: Path
) -> None:
    """An NMI on lines 1 and 4 with different content: both sent the first night, in order
    (the later wins); nothing the nights after, line 1 giving way to line 4. When line 4
    changes, only it is sent; when it goes, line 1 is sent, as the input's last word."""
    first, other, another = installations(3, seed=4, start=200)
    later = first | {"jobNumber": "JOB-LATER"}
    nmi = first["nmi"]
    state = tmp_path / "state"
    path = write_jsonl(tmp_path / "nightly.jsonl", [first, other, another, later])

    assert night(register, [path], tmp_path / "mon", state) == 4
    assert stored(register, nmi)["jobNumber"] == "JOB-LATER"
    for name in ("tue", "wed"):
        assert night(register, [path], tmp_path / name, state) == 0
        found = by_line(tmp_path / name)
        assert found[("nightly.jsonl", 1)]["outcome"] == "skipped"
        assert f"superseded by line 4 of {path}" in found[("nightly.jsonl", 1)]["reason"]
        assert found[("nightly.jsonl", 4)]["outcome"] == "skipped"
        assert "unchanged since" in found[("nightly.jsonl", 4)]["reason"]
    assert versions(register) == 4

    changed = first | {"jobNumber": "JOB-CHANGED"}
    write_jsonl(path, [first, other, another, changed])
    assert night(register, [path], tmp_path / "thu", state) == 1
    assert stored(register, nmi)["jobNumber"] == "JOB-CHANGED"
    assert by_line(tmp_path / "thu")[("nightly.jsonl", 1)]["outcome"] == "skipped"

    write_jsonl(path, [first, other, another])
    assert night(register, [path], tmp_path / "fri", state) == 1
    assert stored(register, nmi)["jobNumber"] == first["jobNumber"]
    assert by_line(tmp_path / "fri")[("nightly.jsonl", 1)]["outcome"] == "accepted"
    assert night(register, [path], tmp_path / "sat", state) == 0


def test_repeats_across_two_inputs_far_apart(register: Sim, tmp_path: Path) -> None:
    """The second file repeats the first file's line 1 and has a later version of its line
    2, hundreds of NMIs later (more than a run keeps in mind: the ledger remembers)."""
    records = list(installations(600, seed=5, start=300))
    revised = records[1] | {"jobNumber": "JOB-SECOND-FILE"}
    first = write_jsonl(tmp_path / "first.jsonl", records)
    second = write_jsonl(tmp_path / "second.jsonl", [records[0], revised])
    state = tmp_path / "state"
    one_worker = ("--concurrency", "1")

    assert night(register, [first, second], tmp_path / "mon", state, *one_worker) == 601
    found = by_line(tmp_path / "mon")
    assert found[("second.jsonl", 1)]["outcome"] == "skipped"
    assert f"duplicates line 1 of {first}" in found[("second.jsonl", 1)]["reason"]
    assert stored(register, revised["nmi"])["jobNumber"] == "JOB-SECOND-FILE"

    assert night(register, [first, second], tmp_path / "tue", state, *one_worker) == 0
    found = by_line(tmp_path / "tue")
    assert {line["outcome"] for line in found.values()} == {"skipped"}
    assert f"superseded by line 2 of {second}" in found[("first.jsonl", 2)]["reason"]
    assert versions(register) == 601


def test_force_sends_a_repeated_record_once(register: Sim, tmp_path: Path) -> None:
    """--force sends every record again, but a line that repeats an earlier one of the same
    run is still sent once."""
    a, b = installations(2, seed=6, start=400)
    path = write_jsonl(tmp_path / "nightly.jsonl", [a, b, a])
    state = tmp_path / "state"
    assert night(register, [path], tmp_path / "mon", state) == 2

    assert night(register, [path], tmp_path / "tue", state, "--force") == 2
    line = by_line(tmp_path / "tue")[("nightly.jsonl", 3)]
    assert line["outcome"] == "skipped"
    assert f"duplicates line 1 of {path}" in line["reason"]
    assert versions(register) == 4


async def test_versions_deferred_past_the_bound_are_sent_and_end_right(
    tmp_path: Path, tap: Tap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five NMIs in two versions each, a bound of two records waiting for a later line:
    the others are sent rather than kept, and the register still ends with every later
    version, each line accounted for once."""
    monkeypatch.setattr(engine, "MAX_DEFERRED", 2)
    earlier = list(installations(5, seed=10, start=800))
    later = [record | {"jobNumber": "JOB-LATER"} for record in earlier]
    path = write_jsonl(tmp_path / "nightly.jsonl", [*earlier, *later])
    async with asyncio.timeout(30), Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
        settings = run_settings(sim, tmp_path)
        await e2e_submit(settings, tmp_path, [path], out="mon")
        sent_first = len(tap.writes())
        tue = await e2e_submit(settings, tmp_path, [path], out="tue")
        held = {r["nmi"]: sim.store.installation(r["nmi"]) for r in earlier}

    assert sent_first == 10
    # Three earlier versions went past the bound and were sent, so their later ones too.
    assert len(tap.writes()) - sent_first == 6
    assert {nmi: version.record["jobNumber"] for nmi, version in held.items() if version} == {
        record["nmi"]: "JOB-LATER" for record in earlier
    }
    found = by_line(tue.out_dir)
    assert len(found) == 10
    assert [found[("nightly.jsonl", n)]["outcome"] for n in range(1, 11)] == [
        *["accepted"] * 3,
        *["skipped"] * 2,
        *["accepted"] * 3,
        *["skipped"] * 2,
    ]


@pytest.fixture(scope="module")
def slow_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """A register slow enough to be killed in the middle of a run."""
    with simulator(tmp_path_factory.mktemp("slow"), "--latency-ms", "50") as running:
        yield running


def test_a_resumed_run_sends_a_repeated_record_once(slow_sim: Sim, tmp_path: Path) -> None:
    """kill -9 part way through a run whose every record is on two lines, then resume: each
    record is written once, and every repeat names the line it duplicates."""
    slow_sim.reset()
    records = list(installations(120, seed=7, start=500))
    lines = [record for record in records for _ in range(2)]
    path = write_jsonl(tmp_path / "nightly.jsonl", lines)
    out, state = tmp_path / "out", tmp_path / "state"
    args = ["submit", str(path), "--out", str(out), "--concurrency", "8"]
    proc = start(*args, *slow_sim.flags(state), log=tmp_path / "log")
    try:
        wait_until(proc, lambda: has_lines(out, 60), timeout_s=RUN_TIMEOUT_S, what="60 outcomes")
        assert proc.poll() is None, "the run ended before it could be killed"
        kill9(proc)
    finally:
        stop(proc)

    resumed = wem_der(
        "resume", str(out), "--client-secret-file", str(slow_sim.secret_file), "--no-progress"
    )

    assert resumed.code == 0, resumed.output
    stats = slow_sim.stats()
    assert (stats["installations"], stats["installation_versions"]) == (120, 120)
    found = by_line(out)
    assert len(found) == 240
    for n in range(2, 241, 2):
        line = found[("nightly.jsonl", n)]
        assert line["outcome"] == "skipped", line
        assert f"duplicates line {n - 1} of {path}" in line["reason"]


# --- file descriptors -----------------------------------------------------------------


def limited(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn: the child may have `soft` files open (and raise that up to `hard`)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def hard_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)


@pytest.mark.parametrize(
    ("soft", "hard", "workers"),
    [
        # Only the hard limit given: fewer workers, said on stderr.
        pytest.param(160, 160, 44, id="at-the-hard-limit"),
        # Room under the hard limit: the soft limit is raised, every worker runs.
        pytest.param(160, hard_limit(), 100, id="under-the-hard-limit"),
    ],
)
def test_a_thousand_files_under_a_low_open_file_limit(
    tmp_path: Path, soft: int, hard: int, workers: int
) -> None:
    """`ulimit -n 160` and the embedded simulator, whose connections cost this process two
    descriptors each: the run fits its workers into the limit and sends every record."""
    if hard > soft and hard < 272:
        pytest.skip(f"the hard limit ({hard}) leaves no room to raise the soft one")
    records = installations(1000, seed=8, start=1000)
    paths = [write_jsonl(tmp_path / f"in-{n:04d}.jsonl", [rec]) for n, rec in enumerate(records)]
    out = tmp_path / "out"
    args = ["submit", *map(str, paths), "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [PYTHON, "-m", "wem_der", *args, "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        env=clean_environ(),
        cwd=tmp_path,
        preexec_fn=limited(soft, hard),
        check=False,
    )

    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]
    summary = read_summary(out)
    assert (summary["accepted"], summary["concurrency"]) == (1000, workers)
    noted = f"running {workers} workers, not 100" in stderr
    assert noted == (workers < 100), stderr[-3000:]
    if noted:
        assert "`ulimit -n 272`" in stderr
    assert "Too many open files" not in stderr


# A process that takes every descriptor left but `spare`, then opens a ledger (`open`), or
# opens one first and then writes to it (`write`), or runs a read that sorts more than
# SQLite sorts in memory (`sort`), or opens outcome files (`sink`); it prints what it got.
EXHAUSTED = """
import asyncio, os, sys
from pathlib import Path
from wem_der.errors import WemDerError
from wem_der.ledger.store import Ledger
from wem_der.records.shapes import RecordKind
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.ledger.outcome_files import OutcomeSink

def exhaust(spare):
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    for fd in held[:spare]:
        os.close(fd)

async def main(mode, path, spare):
    try:
        if mode == "sink":
            exhaust(spare)
            with OutcomeSink(path):
                print("opened")
            return
        if mode == "open":
            exhaust(spare)
        async with Ledger(path, checkpoint_pages=1) as ledger:
            if mode != "open":
                exhaust(spare)
            if mode == "sort":
                print(len(await ledger.attempt_times("r1")))
                return
            await ledger.start_run(run_id="w", kind="installation", out_dir="o", inputs=[],
                                   settings={})
            for seq in range(300):
                nmi = f"80010{seq:05d}"
                outcome = OutcomeRecord(RecordKind.INSTALLATION, nmi, SourceRef("in", seq + 1),
                                        Outcome.ACCEPTED, content_hash="h", transaction_id="t")
                ledger.record_outcome("w", seq, outcome)
                await ledger.flush()
            print("wrote", await ledger.outcome_counts("w"))
    except WemDerError as exc:
        print("refused:", exc)

asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
"""


def exhausted(mode: str, path: Path, spare: int = 0) -> str:
    done = subprocess.run(
        [PYTHON, "-c", EXHAUSTED, mode, str(path), str(spare)],
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        env=clean_environ() | {"PYTHONPATH": str(REPO)},
        preexec_fn=limited(64, 64),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def says_too_many_files(text: str) -> None:
    assert "too many open files (EMFILE)" in text, text
    assert "this process may have 64 open (`ulimit -n`)" in text, text
    # Not the advice for a damaged file or a full disk.
    assert "move it aside" not in text
    assert "a full disk" not in text


def test_a_ledger_open_keeps_working_when_every_descriptor_is_taken(tmp_path: Path) -> None:
    """Opened, then the process runs out of descriptors: writes and checkpoints (one per
    page of WAL here) go on, since the ledger opened every file it keeps at the start."""
    assert exhausted("write", tmp_path / "ledger.sqlite3") == "wrote {'accepted': 300}\n"


@pytest.mark.parametrize("spare", range(5))
def test_a_ledger_that_cannot_be_opened_for_want_of_descriptors_says_so(
    tmp_path: Path, spare: int
) -> None:
    """Whichever of its files the open lacks a descriptor for, the message names the
    cause and the limit, not a broken ledger."""
    text = exhausted("open", tmp_path / "ledger.sqlite3", spare)
    assert text.startswith("refused: cannot "), text
    says_too_many_files(text)


def test_a_sort_that_needs_a_temporary_file_says_why_it_failed(tmp_path: Path) -> None:
    """SQLite's "unable to open database file" from a temporary file is named as what it is."""
    path = tmp_path / "ledger.sqlite3"
    # Enough attempt rows that sorting them spills out of SQLite's memory into a file.
    script = """
import sqlite3, sys
from pathlib import Path
from wem_der.ledger.schema import BEGIN_ATTEMPT, open_ledger
conn = open_ledger(Path(sys.argv[1]), busy_timeout_s=5)
conn.execute("BEGIN")
conn.executemany(BEGIN_ATTEMPT, (("r1", n, "installation", "8001", "create", "h",
                                  float(n * 7919 % 300_000)) for n in range(300_000)))
conn.execute("COMMIT")
conn.close()
"""
    subprocess.run(
        [PYTHON, "-c", script, str(path)],
        check=True,
        timeout=RUN_TIMEOUT_S,
        env=clean_environ() | {"PYTHONPATH": str(REPO)},
    )
    text = exhausted("sort", path)
    assert text.startswith("refused: writing the ledger"), text
    assert "unable to open database file" in text
    says_too_many_files(text)


def test_outcome_files_that_cannot_be_opened_for_want_of_descriptors_say_so(
    tmp_path: Path,
) -> None:
    text = exhausted("sink", tmp_path / "out")
    assert text.startswith(f"refused: cannot open {tmp_path / 'out'}/"), text
    says_too_many_files(text)


def test_a_repeated_array_item_or_standard_input_line_is_named(
    register: Sim, tmp_path: Path
) -> None:
    """The reason names an array's item (several share a line) and standard input."""
    a, b = installations(2, seed=11, start=900)
    array = tmp_path / "nightly.json"
    array.write_bytes(orjson.dumps([a, b, a]))
    assert night(register, [array], tmp_path / "array", tmp_path / "state") == 2
    [line] = outcome_lines_of(tmp_path / "array", "skipped")
    assert f"duplicates item 0 (at line 1) of {array}" in line["reason"]

    c = next(installations(1, seed=12, start=950))
    out = tmp_path / "stdin"
    args = ["submit", "-", "--out", str(out), *register.flags(tmp_path / "state")]
    done = subprocess.run(
        [PYTHON, "-m", "wem_der", *args],
        input=orjson.dumps(c) + b"\n" + orjson.dumps(c) + b"\n",
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        env=clean_environ(),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    [line] = outcome_lines_of(out, "skipped")
    assert "duplicates line 1 of standard input" in line["reason"]


def outcome_lines_of(out: Path, outcome: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in (out / f"{outcome}.jsonl").read_bytes().splitlines()]


def test_every_repeat_outcome_line_is_json(register: Sim, tmp_path: Path) -> None:
    """The reasons name paths as text, even for a file name that is not UTF-8."""
    a = next(installations(1, seed=9, start=700))
    path = write_jsonl(tmp_path / "caf\udce9.jsonl", [a, a])
    assert night(register, [path], tmp_path / "out", tmp_path / "state") == 1
    raw = (tmp_path / "out" / "skipped.jsonl").read_bytes()
    line = orjson.loads(raw)
    assert "duplicates line 1 of " in line["reason"]
    assert "caf\\xe9.jsonl" in line["reason"]
