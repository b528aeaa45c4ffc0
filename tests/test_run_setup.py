"""What happens before a run sends anything: the outcome directory's lock and run.json, the
settings' checks, the progress bar's total and clock, and the files born owner-only."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from wem_der.cli import progress as progress_module
from wem_der.cli.main import build_parser
from wem_der.cli.progress import Progress, estimate_records
from wem_der.config import load_settings
from wem_der.errors import ConfigError
from wem_der.files.private import private_file, write_json_atomic
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.records.shapes import RecordKind
from wem_der.run.lock import run_lock
from wem_der.run.resolve import settings_from
from wem_der.simulator.testing import ManualClock

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


@pytest.fixture
def progress_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """cli/progress.py's clock, moved by the test (the event loop keeps the real one)."""
    clock = ManualClock(start=0.0)
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=clock))
    return clock


async def test_the_rate_is_counted_from_start(progress_clock: ManualClock) -> None:
    """The setup between building the bar and starting it sends nothing: it is not in the rate."""
    bar = Progress(total=10, stream=io.StringIO())
    progress_clock.advance(100.0)  # settings, the inputs counted, the ledger opened
    bar.start()
    try:
        bar.on_outcome(
            OutcomeRecord(RecordKind.INSTALLATION, "8001000001", SourceRef("in"), Outcome.ACCEPTED)
        )
        progress_clock.advance(1.0)
        line = bar.line()
    finally:
        await bar.stop()
    assert "1/10" in line
    assert "1.0 rec/s" in line
    assert "ETA 0:00:09" in line


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


def test_a_bad_rate_from_a_profile_is_refused(tmp_path: Path) -> None:
    (tmp_path / "odd.toml").write_text('embedded_simulator = true\nrate_limit = "0/60s"\n')
    with pytest.raises(ConfigError, match=r"rate_limit: .*rate '0/60s' must allow at least 1"):
        load_settings("odd", environ={}, config_dir=tmp_path)


def test_a_stored_bad_rate_is_refused() -> None:
    """The settings a run stored (its run.json, for resume) are checked like any other."""
    with pytest.raises(ConfigError, match=r"rate_limit: .*rate 'fast' is not COUNT/PERIOD"):
        settings_from(argparse.Namespace(), env="local", stored={"rate_limit": "fast"})


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
        # argparse alone said only "the following arguments are required: --out".
        (
            ["submit", "in.jsonl", "--outt", "out"],
            "unrecognized option --outt (did you mean --out?)",
        ),
        (
            ["submit", "in.jsonl", "--out", "o", "--concurency", "5"],
            "unrecognized option --concurency (did you mean --concurrency?)",
        ),
        (
            ["resume", "run", "--nmi-base-urll=http://x"],
            "unrecognized option --nmi-base-urll (did you mean --nmi-base-url?)",
        ),
        (["submit", "in.jsonl", "--bogus"], "unrecognized option --bogus\n"),
    ],
)
def test_a_mistyped_option_is_named_with_the_one_meant(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "in.jsonl", "--ou", "o", "--concurrency", "-5"],  # a prefix, a negative
        ["submit", "-", "--out", "o"],  # stdin
        ["submit", "--out", "o", "--", "--file-named-like-an-option"],
    ],
)
def test_what_argparse_accepts_is_not_taken_for_a_typo(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).command == "submit"


@pytest.mark.parametrize(
    ("argv", "expected", "value"),
    [
        (
            ["submit", "in.jsonl", "--out", "o", "--client-secret", "-s3"],
            "--client-secret: expected one argument",
            "-s3",
        ),
        # Nor the value of a mistyped one, which argparse alone listed in full.
        (
            ["submit", "in.jsonl", "--out", "o", "--client-secrett=s3cr3t"],
            "unrecognized option --client-secrett (did you mean --client-secret?)",
            "s3cr3t",
        ),
    ],
    ids=["missing-value", "mistyped-option"],
)
def test_a_refused_option_value_is_not_echoed(
    argv: list[str], expected: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value argparse refuses may be a secret: the error names the option, not the value."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert expected in err
    assert value not in err
