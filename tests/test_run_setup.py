"""What happens before a run sends anything: the outcome directory's lock and run.json, the
settings' checks, the progress bar's total and clock, and the files born owner-only."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from wem_der.cli.main import parse
from wem_der.cli.progress import Progress, estimate_records
from wem_der.config import load_settings, settings_from
from wem_der.errors import ConfigError
from wem_der.files.private import private_file, write_json_atomic
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.records.shapes import RecordKind
from wem_der.run.lock import run_lock
from wem_der.testing import VirtualClock

from tests.e2e import records, run_cli, wem_der, write_jsonl

LIVE_RUN = "20240101T000000Z-live01"
CLI_TIMEOUT_S = 60


# -- the outcome directory of a live run ------------------------------------------------------


async def test_a_submit_into_a_live_runs_directory_leaves_its_run_json(tmp_path: Path) -> None:
    """A second run started on the directory of a live one is refused, and the live run's
    run.json (what `resume DIR` reads) is not touched."""
    out, state = tmp_path / "out", tmp_path / "state"
    path = write_jsonl(tmp_path / "in.jsonl", records(2))
    with run_lock(out):  # as the live run's process holds it
        write_json_atomic(out / "run.json", {"run_id": LIVE_RUN, "kind": "installation"})
        before = (out / "run.json").read_bytes()
        async with asyncio.timeout(CLI_TIMEOUT_S):
            args = ["submit", str(path), "--out", str(out), "--state-dir", str(state)]
            refused = await run_cli([*args, "--no-progress", "--log-format", "json"], tmp_path)
        after = (out / "run.json").read_bytes()
        left = sorted(p.name for p in out.iterdir())

    assert refused.code == 2, refused.stderr
    assert f"the outcome directory {out} is in use by a run live in another process" in (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr
    assert after == before
    assert left == [".lock", "run.json"]  # no outcome file of the refused run either
    assert not state.exists()  # refused before it opened a ledger


# -- the progress bar's total -----------------------------------------------------------------


def test_a_named_pipe_is_not_counted_nor_read(tmp_path: Path) -> None:
    """Counting a named pipe would empty it before the run reads it: no total, nothing read."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    data = b"".join(orjson.dumps(r) + b"\n" for r in records(3))
    # Held open read-write by the test: the pipe has a writer, so opening it to read does not
    # wait, and what is written stays in it until someone reads it.
    keeper = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    left = b""
    try:
        os.write(keeper, data)
        with ThreadPoolExecutor(1) as pool:
            counting = pool.submit(estimate_records, [str(fifo)])
            try:
                # Bounded: a count that reads the pipe waits for more while the writer is open.
                total = counting.result(timeout=10)
            finally:
                try:
                    left = os.read(keeper, len(data) + 1)
                except BlockingIOError:
                    left = b""  # the count took it all
                os.close(keeper)  # a count still reading now sees the end, so the pool exits
    finally:
        fifo.unlink()
    assert total is None
    assert left == data


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"a": 1}\n{"a": 2}\n', 2),
        (b'{"a": 1}\n{"a": 2}', 2),  # a last record without its newline
        (b"", 0),
        (gzip.compress(b'{"a": 1}\n'), None),
        (b' [{"a": 1}, {"a": 2}]', None),
    ],
    ids=["jsonl", "no-final-newline", "empty", "gzip", "array"],
)
def test_regular_files_are_counted_when_plain_jsonl(
    tmp_path: Path, content: bytes, expected: int | None
) -> None:
    path = tmp_path / "in"
    path.write_bytes(content)
    assert estimate_records([str(path)]) == expected
    assert estimate_records([str(path), "-"]) is None  # standard input cannot be counted


async def test_the_rate_and_time_left_are_of_the_records_sent() -> None:
    """The setup before the bar starts sends nothing: it is not in the rate nor the ETA."""
    clock = VirtualClock(start=0.0)  # the bar's clock, moved by the test
    screen = io.StringIO()
    bar = Progress(total=10, console=Console(file=screen, width=120), clock=clock)
    clock.jump(100.0)  # settings, the inputs counted, the ledger opened
    bar.start()
    try:
        for outcome in (Outcome.ACCEPTED, Outcome.REJECTED, Outcome.ACCEPTED):
            record = OutcomeRecord(RecordKind.INSTALLATION, "8001000001", SourceRef("in"), outcome)
            bar.on_outcome(record)
            clock.jump(1.0)
    finally:
        await bar.stop()  # draws the bar a last time, even where stderr is not a terminal
    line = screen.getvalue()
    assert " 3/10 1.0 rec/s ETA 0:00:07 accepted 2  rejected 1\n" in line


async def test_the_bar_says_when_the_register_is_down() -> None:
    """While the run waits for the register, the bar says since when and the next probe."""
    clock = VirtualClock(start=0.0)
    screen = io.StringIO()
    bar = Progress(total=10, console=Console(file=screen, width=160), clock=clock)
    status: list[str | None] = ["register unavailable since 02:13:05; next probe in 40 s"]
    bar.watch(lambda: status[0])
    bar.start()
    try:
        bar.on_outcome(
            OutcomeRecord(RecordKind.INSTALLATION, "8001000001", SourceRef("in"), Outcome.ACCEPTED)
        )
    finally:
        await bar.stop()
    assert (
        "accepted 1  register unavailable since 02:13:05; next probe in 40 s" in screen.getvalue()
    )


# -- settings ----------------------------------------------------------------------------------


async def test_a_bad_rate_from_the_environment_is_a_clean_error(tmp_path: Path) -> None:
    """WEMDER_RATE_LIMIT=bogus: exit 2 and a message naming the value, not a traceback."""
    path = write_jsonl(tmp_path / "in.jsonl", records(1))
    args = ["submit", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--no-progress"]
    env = {"WEMDER_RATE_LIMIT": "bogus"}
    done = await wem_der(args, tmp_path, env=env, timeout_s=CLI_TIMEOUT_S)
    assert done.code == 2, done.stderr
    assert "wem-der: invalid settings: rate_limit:" in done.stderr
    assert "WEMDER_RATE_LIMIT" in done.stderr
    assert "rate 'bogus' is not COUNT/PERIOD" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # refused before a record was validated
    assert not (tmp_path / "out").exists()


async def test_a_bad_max_outage_is_a_clean_error(tmp_path: Path) -> None:
    """--max-outage takes a duration: anything else is exit 2, naming the option."""
    path = write_jsonl(tmp_path / "in.jsonl", records(1))
    args = ["submit", str(path), "--out", str(tmp_path / "out"), "--max-outage", "3 hours"]
    done = await wem_der([*args, "--dry-run", "--no-progress"], tmp_path, timeout_s=CLI_TIMEOUT_S)
    assert done.code == 2, done.stderr
    assert "max_outage:" in done.stderr
    assert "--max-outage" in done.stderr
    assert "duration '3 hours' is not a number" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_rate_from_a_profile_is_refused(tmp_path: Path) -> None:
    (tmp_path / "odd.toml").write_text('embedded_simulator = true\nrate_limit = "0/60s"\n')
    with pytest.raises(ConfigError, match=r"rate_limit: .*rate '0/60s' must allow at least 1"):
        load_settings("odd", environ={}, config_dir=tmp_path)


def test_a_stored_bad_rate_is_refused() -> None:
    """The settings a run stored (its run.json, for resume) are checked like any other."""
    with pytest.raises(ConfigError, match=r"rate_limit: .*rate 'fast' is not COUNT/PERIOD"):
        settings_from({}, env="local", stored={"rate_limit": "fast"})


@pytest.mark.parametrize("given", ["false", "0"])
def test_the_environment_cannot_lower_production(given: str) -> None:
    assert load_settings("prod", environ={"WEMDER_PRODUCTION": given}).production is True


def test_a_bad_production_value_is_refused_even_under_prod() -> None:
    """The profile's word wins, but what the environment says is still checked."""
    with pytest.raises(ConfigError, match="invalid settings: production"):
        load_settings("prod", environ={"WEMDER_PRODUCTION": "bogus"})


# -- owner-only files --------------------------------------------------------------------------


def test_private_file_is_born_owner_only_and_leaves_a_file_alone(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private_file(tmp_path / "new.sqlite3")
        (tmp_path / "kept").write_bytes(b"content")
        private_file(tmp_path / "kept")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.sqlite3").stat().st_mode) == 0o600
    assert (tmp_path / "new.sqlite3").read_bytes() == b""
    assert (tmp_path / "kept").read_bytes() == b"content"
    assert stat.S_IMODE((tmp_path / "kept").stat().st_mode) == 0o666  # made under umask 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Named before the missing --out (argparse named only that).
        (["submit", "in.jsonl", "--outt", "out"], "No such option '--outt'. Did you mean '--out'?"),
        (
            ["submit", "in.jsonl", "--out", "o", "--concurency", "5"],
            "No such option '--concurency'. Did you mean '--concurrency'?",
        ),
        (
            ["resume", "run", "--nmi-base-urll=http://x"],
            "No such option '--nmi-base-urll'. Did you mean '--nmi-base-url'?",
        ),
        # No prefix stands for an option: one that does today could stand for two tomorrow.
        (["submit", "in.jsonl", "--ou", "o"], "No such option '--ou'. Did you mean '--out'?"),
        # Compared without their dashes, which would make --oz look like --out.
        (["submit", "in.jsonl", "--oz"], "No such option '--oz'.\n"),
    ],
)
def test_a_mistyped_option_is_named_with_the_one_meant(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse(argv) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "paths"),
    [
        (["submit", "in.jsonl", "--out", "o", "--concurrency", "-5"], ["in.jsonl"]),  # a negative
        (["submit", "-", "--out", "o"], ["-"]),  # stdin
        (["submit", "--out", "o", "--", "--named-like-an-option"], ["--named-like-an-option"]),
    ],
)
def test_what_the_parser_accepts_is_not_taken_for_a_typo(argv: list[str], paths: list[str]) -> None:
    options = parse(argv)
    assert isinstance(options, dict)
    assert (options["command"], options["paths"]) == ("submit", paths)


def test_options_are_named_as_the_long_options_and_none_unless_given() -> None:
    """Each command hands on its options by long name (`--with` as `corrected`); a setting
    not given is None, so that the environment, the profile or the run's record supplies it."""
    resubmit = parse(["resubmit", "RUN", "--with", "fixed.jsonl", "--rate-limit", "300/3s"])
    submit = parse(["submit", "a", "b", "--out", "o", "--insecure", "--client-secret", "-s3"])
    resume = parse(["resume", "RUN"])
    assert isinstance(resubmit, dict)
    assert isinstance(submit, dict)
    assert isinstance(resume, dict)
    assert (resubmit["command"], resubmit["run"], resubmit["corrected"]) == (
        "resubmit",
        "RUN",
        Path("fixed.jsonl"),
    )
    assert (resubmit["only"], resubmit["rate_limit"]) == ("failed,rejected", "300/3s")
    assert (resubmit["insecure"], resubmit["client_secret"], resubmit["out"]) == (None,) * 3
    assert (submit["paths"], submit["out"]) == (["a", "b"], Path("o"))
    assert submit["kind"] == "installation"
    assert (submit["insecure"], submit["force"], submit["dry_run"]) == (True, False, False)
    assert submit["client_secret"] == "-s3"  # a secret may begin with a dash
    assert (resume["paths"], resume["force"], resume["kind"]) == ([], None, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "in.jsonl", "--out", "o", "--client-secrett=s3cr3t"],
        ["submit", "in.jsonl", "--out", "o", "--client-secrett", "s3cr3t"],
    ],
    ids=["joined", "apart"],
)
def test_the_value_of_a_mistyped_option_is_not_echoed(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """It may be a secret: the error names the option, not the value."""
    assert parse(argv) == 2
    err = capsys.readouterr().err
    assert "No such option '--client-secrett'. Did you mean '--client-secret'?" in err
    assert "s3cr3t" not in err
