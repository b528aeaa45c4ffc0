"""Set-ups that would destroy data or crash a run before it sends anything, refused or
carried through: an input that is one of the run's own files, an input that cannot be
fingerprinted, a closed standard input, a file name that is not UTF-8, and credentials
in an endpoint URL.

Each runs `python -m wem_der` as a real process against the embedded simulator, as an
operator would in a shell.
"""

from __future__ import annotations

import asyncio
import os
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from wem_der.files.pathtext import from_text, to_text
from wem_der.records.outcomes import Outcome

from tests.e2e import (
    Done,
    read_outcomes,
    read_problems,
    records,
    run_cli,
    wem_der,
    write_jsonl,
)

CLI_TIMEOUT_S = 60
SECRET = "hunter2-" + "Zq9" * 5
PROBLEMS = resources.files("wem_der.data").joinpath("sample-with-problems.jsonl").read_bytes()


async def _wem_der(
    tmp_path: Path, *args: str, stdin: bytes = b"", redirect: str | None = None
) -> Done:
    """`wem-der ARGS` from `tmp_path`, its ledger in `tmp_path/state`, JSON logs."""
    async with asyncio.timeout(CLI_TIMEOUT_S):
        flags = ["--state-dir", str(tmp_path / "state"), "--no-progress", "--log-format", "json"]
        return await run_cli([*args, *flags], tmp_path, stdin, redirect=redirect)


def _run_json(out: Path) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads((out / "run.json").read_bytes())
    return found


def _files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


def _assert_clean_refusal(done: Done) -> None:
    assert done.code == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("wem-der: "), done.stderr


# -- an input that is one of the run's own files ------------------------------------------------


@pytest.fixture
async def finished(tmp_path: Path) -> Path:
    """`out`, the outcome directory of a finished run that accepted three records."""
    path = write_jsonl(tmp_path / "in.jsonl", records(3))
    done = await _wem_der(tmp_path, "submit", str(path), "--out", "out")
    assert done.code == 0, done.stderr
    assert len(read_outcomes(tmp_path / "out")["accepted"]) == 3
    return tmp_path / "out"


def _name_accepted(tmp_path: Path, how: str) -> str:
    """A name for out/accepted.jsonl, made as `how` says."""
    if how == "symlink":
        (tmp_path / "link.jsonl").symlink_to(tmp_path / "out" / "accepted.jsonl")
        return "link.jsonl"
    if how == "hard-link":
        os.link(tmp_path / "out" / "accepted.jsonl", tmp_path / "hard.jsonl")
        return "hard.jsonl"
    if how == "linked-out-dir":
        (tmp_path / "elsewhere").symlink_to(tmp_path / "out")
        return "elsewhere/accepted.jsonl"
    return {"same": "out/accepted.jsonl", "dotted": "./out/../out/./accepted.jsonl"}[how]


@pytest.mark.parametrize("how", ["same", "dotted", "symlink", "hard-link", "linked-out-dir"])
async def test_an_input_that_is_an_outcome_file_of_the_run_is_refused(
    tmp_path: Path, finished: Path, how: str
) -> None:
    """`submit out/accepted.jsonl --out out`, by any name of that file, would empty it before
    reading it: refused, naming the input, and every file of the finished run kept."""
    before = _files(finished)
    name = _name_accepted(tmp_path, how)

    done = await _wem_der(tmp_path, "submit", name, "--out", "out")

    _assert_clean_refusal(done)
    assert str(finished / "accepted.jsonl") in done.stderr
    assert "a file this run writes (in its outcome directory)" in done.stderr
    if how == "hard-link":
        assert f"input {tmp_path / 'hard.jsonl'} is {finished / 'accepted.jsonl'}" in done.stderr
    assert _files(finished) == before


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
async def test_standard_input_redirected_from_an_outcome_file_is_refused(
    tmp_path: Path, finished: Path, name: str
) -> None:
    """`submit - --out out < out/accepted.jsonl`: the run would empty the file it reads."""
    before = _files(finished)

    done = await _wem_der(tmp_path, "submit", name, "--out", "out", redirect="< out/accepted.jsonl")

    _assert_clean_refusal(done)
    # `/dev/stdin` leads to the file it was redirected from: the run reads (and names) that.
    given = "standard input is" if name == "-" else "input"
    assert f"{given} {finished / 'accepted.jsonl'}" in done.stderr
    assert "a file this run writes (in its outcome directory)" in done.stderr
    assert _files(finished) == before


async def test_the_ledger_as_input_is_refused(tmp_path: Path, finished: Path) -> None:
    ledger = tmp_path / "state" / "ledger.sqlite3"
    before = ledger.read_bytes()

    done = await _wem_der(tmp_path, "submit", str(ledger), "--out", "other")

    _assert_clean_refusal(done)
    assert "a file this run writes (in its state directory)" in done.stderr
    assert "--state-dir" in done.stderr
    assert ledger.read_bytes() == before
    assert not (tmp_path / "other").exists()


async def test_a_correction_file_among_the_outcome_files_is_refused(
    tmp_path: Path, finished: Path
) -> None:
    """`resubmit RUN --with out/accepted.jsonl --out out`: the corrections would be emptied."""
    before = _files(finished)

    done = await _wem_der(
        tmp_path, "resubmit", "out", "--only", "accepted", "--with", "out/accepted.jsonl",
        "--out", "out",
    )  # fmt: skip

    _assert_clean_refusal(done)
    assert f"input {finished / 'accepted.jsonl'} is a file this run writes" in done.stderr
    assert _files(finished) == before


async def test_a_resume_fed_its_own_outcome_file_is_refused(tmp_path: Path) -> None:
    """A run read from standard input is resumed with standard input redirected from one of
    the files the resume rewrites: refused, the files kept."""
    data = b"".join(orjson.dumps(r) + b"\n" for r in records(3))
    done = await _wem_der(tmp_path, "submit", "-", "--out", "out", stdin=data)
    assert done.code == 0, done.stderr
    before = _files(tmp_path / "out")

    resumed = await _wem_der(tmp_path, "resume", "out", redirect="< out/accepted.jsonl")

    _assert_clean_refusal(resumed)
    assert "standard input is" in resumed.stderr
    assert _files(tmp_path / "out") == before


# -- inputs that cannot be fingerprinted --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "redirect"),
    [
        ("/dev/stdin", None),
        ("/proc/self/fd/0", None),
        # What a shell's `<(gzip -dc f)` hands over: a pipe on a descriptor of its own.
        ("/dev/fd/3", "3<&0"),
    ],
)
async def test_a_pipe_named_as_a_path_is_read_like_standard_input(
    tmp_path: Path, name: str, redirect: str | None
) -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records(3))

    done = await _wem_der(tmp_path, "submit", name, "--out", "out", stdin=data, redirect=redirect)

    assert done.code == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert len(read_outcomes(tmp_path / "out")["accepted"]) == 3
    run = _run_json(tmp_path / "out")
    assert run["inputs"] == [name]
    assert run["input_fingerprints"] == {name: None}  # recorded as not fingerprinted
    assert f"note: {name} is a stream" in done.stderr
    assert "`wem-der resume` cannot check it for changes" in done.stderr


async def test_a_device_is_read_and_not_fingerprinted(tmp_path: Path) -> None:
    done = await _wem_der(tmp_path, "submit", "/dev/null", "--out", "out")

    assert done.code == 0, done.stderr
    assert _run_json(tmp_path / "out")["input_fingerprints"] == {"/dev/null": None}
    assert "note: /dev/null is a stream" in done.stderr


async def test_resuming_a_pipe_that_is_gone_says_so(tmp_path: Path) -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records(2))
    done = await _wem_der(
        tmp_path, "submit", "/dev/fd/3", "--out", "out", stdin=data, redirect="3<&0"
    )
    assert done.code == 0, done.stderr

    resumed = await _wem_der(tmp_path, "resume", "out")

    _assert_clean_refusal(resumed)
    assert "read /dev/fd/3 as a stream (standard input, a pipe or a device)" in resumed.stderr


async def test_resuming_from_standard_input_warns_that_it_cannot_be_checked(
    tmp_path: Path,
) -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records(2))
    done = await _wem_der(tmp_path, "submit", "/dev/stdin", "--out", "out", stdin=data)
    assert done.code == 0, done.stderr
    run_id = _run_json(tmp_path / "out")["run_id"]

    resumed = await _wem_der(tmp_path, "resume", "out", stdin=data)

    assert resumed.code == 0, resumed.stderr
    assert f"cannot be checked for changes: it must give the records it gave run {run_id}" in (
        resumed.stderr
    )


# -- standard input closed ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["-", "/dev/stdin", "/proc/self/fd/0"])
@pytest.mark.parametrize("command", ["submit", "validate"])
async def test_a_closed_standard_input_is_a_usage_error(
    tmp_path: Path, name: str, command: str
) -> None:
    args = [command, name] + (["--out", "out"] if command == "submit" else [])
    async with asyncio.timeout(CLI_TIMEOUT_S):
        done = await run_cli(args, tmp_path, redirect="<&-")

    _assert_clean_refusal(done)
    assert f"{name!r} names standard input, which is closed" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run, no ledger


# -- file names that are not UTF-8 --------------------------------------------------------------

NASTY = [
    b"bad\xff\xfe.jsonl",
    b"back\\slash\\xff.jsonl",  # an escape's own spelling, taken literally
    b"line\nbreak\x1b[2J.jsonl",
    b"\xe2\x80\xaeright-to-left.jsonl",
    b"caf\xc3\xa9 \xc2\x9b.jsonl",
]


@pytest.mark.parametrize("name", NASTY)
def test_a_path_round_trips_through_its_text(name: bytes) -> None:
    path = os.fsdecode(b"/tmp/" + name)
    text = to_text(path)
    assert text.isprintable()
    orjson.dumps(text)  # JSON-safe
    assert from_text(text) == path


async def test_a_file_name_that_is_not_utf8_round_trips(tmp_path: Path) -> None:
    """run.json, the ledger, every outcome line, problems.csv and the log name the input
    as `to_text` writes it; resume and resubmit open the file again from there."""
    name = os.fsdecode(b"bad\xff\xfe.jsonl")
    (tmp_path / name).write_bytes(PROBLEMS)
    out = os.fsdecode(b"out\xff")
    path = str(tmp_path / name)

    done = await _wem_der(tmp_path, "submit", name, "--out", out)

    assert done.code == 1, done.stderr  # the sample holds rejected and invalid records
    assert "Traceback" not in done.stderr
    run = _run_json(tmp_path / out)
    assert [from_text(p) for p in run["inputs"]] == [path]
    assert from_text(run["out_dir"]) == str(tmp_path / out)
    assert [from_text(p) for p in run["input_fingerprints"]] == [path]
    lines = [line for found in read_outcomes(tmp_path / out).values() for line in found]
    assert len(lines) == PROBLEMS.count(b"\n")
    assert {from_text(line["source"]["path"]) for line in lines} == {path}
    problems = read_problems(tmp_path / out)
    assert problems
    assert {from_text(row["source_path"]) for row in problems} == {path}
    logged = {entry["source"] for entry in done.logs() if entry["event"] == "record.completed"}
    assert {source.rsplit(":", 1)[0] for source in logged} == {to_text(path)}

    async with asyncio.timeout(CLI_TIMEOUT_S):
        report = await run_cli(
            ["report", run["run_id"], "--format", "json", "--state-dir", "state"], tmp_path
        )
    assert report.code == 0, report.stderr
    assert orjson.loads(report.stdout)["run"]["inputs"] == [to_text(path)]

    resumed = await _wem_der(tmp_path, "resume", out)
    assert resumed.code == 1, resumed.stderr
    assert len(read_outcomes(tmp_path / out)[Outcome.REJECTED.value]) == 2

    again = await _wem_der(tmp_path, "resubmit", run["run_id"], "--only", "rejected")
    assert again.code == 1, again.stderr
    assert "Traceback" not in again.stderr


async def test_a_state_directory_named_with_any_bytes_is_found_again(tmp_path: Path) -> None:
    state = os.fsdecode(b"st\\x41te\xfe")  # a backslash spelled like an escape, and 0xFE
    path = write_jsonl(tmp_path / "in.jsonl", records(2))
    async with asyncio.timeout(CLI_TIMEOUT_S):
        done = await run_cli(
            ["submit", str(path), "--out", "out", "--state-dir", state, "--no-progress"], tmp_path
        )
    assert done.code == 0, done.stderr
    recorded = _run_json(tmp_path / "out")["settings"]["state_dir"]
    assert from_text(recorded) == str(tmp_path / state)

    # `resume DIR` finds the ledger where run.json says it is.
    async with asyncio.timeout(CLI_TIMEOUT_S):
        resumed = await run_cli(["resume", "out", "--no-progress"], tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert not (tmp_path / ".wem-der").exists()  # not a new ledger under the default


# -- credentials in an endpoint URL -------------------------------------------------------------

_SECRET_URLS = [
    f"http://client:{SECRET}@127.0.0.1:9/oauth",
    f"http://client:{SECRET}/x@127.0.0.1:9/oauth",  # a '/' in the password
    f"http://127.0.0.1:9/oauth?client_secret={SECRET}",
    f"http://127.0.0.1:9/oauth#{SECRET}",
]


@pytest.mark.parametrize("url", _SECRET_URLS)
@pytest.mark.parametrize("option", ["--token-url", "--base-url", "--nmi-base-url"])
async def test_credentials_in_a_url_flag_are_refused_unrecorded(
    tmp_path: Path, option: str, url: str
) -> None:
    endpoints = {
        "--token-url": "http://127.0.0.1:9/oauth",
        "--base-url": "http://127.0.0.1:9/v2",
        "--nmi-base-url": "http://127.0.0.1:9/v1",
    }
    flags = [arg for name, value in (endpoints | {option: url}).items() for arg in (name, value)]
    path = write_jsonl(tmp_path / "in.jsonl", records(1))

    done = await _wem_der(
        tmp_path, "submit", str(path), "--out", "out", *flags, "--client-id", "c",
        "--participant-id", "P",
    )  # fmt: skip

    _assert_clean_refusal(done)
    assert option in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing recorded


@pytest.mark.parametrize("source", ["environment", "profile"])
async def test_credentials_in_a_url_from_the_environment_or_a_profile_are_refused(
    tmp_path: Path, source: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", records(1))
    url = f"http://c:{SECRET}@127.0.0.1:9/v2"
    args = ["submit", str(path), "--out", "out", "--state-dir", "state", "--no-progress"]
    env = {}
    if source == "environment":
        env["WEMDER_BASE_URL"] = url
    else:
        profiles = tmp_path / "profiles"
        profiles.mkdir()
        (profiles / "leaky.toml").write_text(f'base_url = "{url}"\n')
        args += ["--env", "leaky", "--config-dir", str(profiles)]

    done = await wem_der(args, tmp_path, env=env, timeout_s=CLI_TIMEOUT_S)

    _assert_clean_refusal(done)
    assert "WEMDER_BASE_URL or --base-url" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "state").exists()
