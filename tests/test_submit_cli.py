"""`wem-der submit` and `resume` as an operator runs them: a subprocess, its exit code, its
output files; stdin input, compression on the wire, refused credentials, Ctrl-C and resume."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TextIO, cast

import orjson
import pytest
from rich.console import Console
from wem_der.cli.guarded_output import GuardedStream, Loss
from wem_der.cli.progress import Progress
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.records.shapes import RecordKind
from wem_der.simulator import FaultProfile, Simulator

from tests.e2e import (
    CLIENT_ID,
    PARTICIPANT,
    Done,
    Tap,
    assert_each_once,
    cli,
    endpoint_flags,
    lines_of,
    read_summary,
    records,
    run_cli,
    sim_settings,
    write_jsonl,
)
from tests.leaks import Secrets, assert_nothing_leaked, everything_written
from tests.processes import run_id_of

# Where a write fails with ENOSPC.
FULL = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")


async def test_stdin_with_the_embedded_simulator(tmp_path: Path) -> None:
    """`submit -` reads JSONL from stdin; a rejected record makes the exit code 1."""
    async with asyncio.timeout(60):
        recs = records(4)
        recs[3].update(availablePhasesCount=1, installedPhasesCount=3)
        data = b"".join(orjson.dumps(r) + b"\n" for r in recs)
        out = tmp_path / "out"
        args = ["submit", "-", "--out", str(out), "--state-dir", str(tmp_path / "state")]
        done = await run_cli([*args, "--no-progress", "--log-format", "json"], tmp_path, data)
        assert done.code == 1, done.stderr
        found = assert_each_once(out, [("-", n, None) for n in range(1, 5)])
        assert len(found["accepted"]) == 3
        assert [line["source"] for line in found["rejected"]] == [{"path": "-", "line": 4}]
        summary = read_summary(out)
        assert (summary["accepted"], summary["rejected"], summary["status"]) == (3, 1, "finished")
        assert summary["register"]["installations"] == 3  # the embedded simulator's count
        assert "accepted" in done.stdout


async def test_usage_and_configuration_errors_exit_2(tmp_path: Path) -> None:
    """A mistyped option, a missing input, or --insecure with the prod profile: exit 2,
    nothing run."""
    async with asyncio.timeout(60):
        out = tmp_path / "out"
        typo = await run_cli(["submit", "nope.jsonl", "--outt", str(out)], tmp_path)
        assert typo.code == 2
        assert "No such option '--outt'. Did you mean '--out'?" in typo.stderr
        missing = await run_cli(["submit", "nope.jsonl", "--out", str(out)], tmp_path)
        assert missing.code == 2
        assert "nope.jsonl" in missing.stderr
        path = write_jsonl(tmp_path / "in.jsonl", records(1))
        insecure = await run_cli(
            ["submit", str(path), "--out", str(out), "--env", "prod", "--insecure"], tmp_path
        )
        assert insecure.code == 2
        assert "production profile" in insecure.stderr
        assert not out.exists()


@pytest.mark.parametrize("compression", ["gzip", "deflate", "none"])
async def test_compression_on_the_wire(tmp_path: Path, tap: Tap, compression: str) -> None:
    """gzip by default, deflate or none with --compression; always with a Content-Length."""
    async with asyncio.timeout(60):
        recs = records(3)
        path = write_jsonl(tmp_path / "in.jsonl", recs)
        flag = [] if compression == "gzip" else ["--compression", compression]
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            args = ["submit", str(path), "--out", str(tmp_path / "out"), *flag]
            done = await run_cli([*args, *endpoint_flags(sim, tmp_path)], tmp_path)
        assert done.code == 0, done.stderr
        writes = tap.writes()
        assert len(writes) == 3
        sent = {}
        for exchange in writes:
            headers = exchange.headers
            assert exchange.raw is not None
            assert headers.get("Content-Encoding") == (
                None if compression == "none" else compression
            )
            assert headers["Content-Length"] == str(len(exchange.raw))
            assert "Transfer-Encoding" not in headers
            assert headers["Content-Type"] == "application/json"
            assert headers["X-initiatingParticipantID"] == PARTICIPANT
            sent[exchange.nmi] = exchange.decoded()
        assert sent == {r["nmi"]: {"data": r} for r in recs}


async def test_refused_credentials_exit_3_and_never_show_the_secret(tmp_path: Path) -> None:
    """A wrong client secret: exit 3, and the secret is in no output, log or file."""
    async with asyncio.timeout(60):
        wrong = "cli-wrong-secret-93e1f4"
        path = write_jsonl(tmp_path / "in.jsonl", records(3))
        out = tmp_path / "out"
        async with Simulator(sim_settings()) as sim:
            flags = endpoint_flags(sim, tmp_path, secret=wrong)
            done = await run_cli(["submit", str(path), "--out", str(out), *flags], tmp_path)
            der = sim.stats()["der_requests_received"]
        assert done.code == 3
        assert "refused the client credentials" in done.stderr + done.stdout
        assert der == 0
        assert_each_once(out, lines_of(path, 3))
        assert read_summary(out)["status"] == "aborted"
        written = everything_written(done, tmp_path, skip=[tmp_path / "secret.txt"])
        assert_nothing_leaked(Secrets(CLIENT_ID, wrong), written)


async def _interrupt_when(held: asyncio.Event, proc: asyncio.subprocess.Process) -> bytes:
    """Once `held` is set, SIGINT; what the run said on stderr up to "stopping" (its sign
    that it has seen the signal)."""
    assert proc.stdin is not None
    assert proc.stderr is not None
    proc.stdin.close()
    await held.wait()
    proc.send_signal(signal.SIGINT)
    said = b""
    while b"stopping" not in said:
        line = await proc.stderr.readline()
        assert line, "the run ended without saying it was stopping"
        said += line
    return said


async def test_ctrl_c_then_resume(tmp_path: Path, tap: Tap) -> None:
    """SIGINT mid-run: exit 3, the rest not sent; `resume RUN_ID` sends exactly the rest."""
    async with asyncio.timeout(60):
        recs = records(12)
        path = write_jsonl(tmp_path / "in.jsonl", recs)
        out = tmp_path / "out"
        arrived = 0
        held = asyncio.Event()
        release = asyncio.Event()

        async def latency(seconds: float) -> None:
            # The simulator's latency: the first four answers at once, then every request
            # waits until the test lets it go, so the run is mid-flight when it is stopped.
            nonlocal arrived
            arrived += 1
            if arrived >= 6:
                held.set()
            if arrived >= 5:
                await release.wait()

        faults = FaultProfile(latency_ms=1)
        sim_cfg = sim_settings(faults=faults)
        async with Simulator(sim_cfg, sleep=latency, middlewares=[tap.middleware]) as sim:
            flags = endpoint_flags(sim, tmp_path)
            # The ledger plans: the simulator's latency counts the writes alone.
            args = ["submit", str(path), "--out", str(out), "--concurrency", "2"]
            args += ["--plan", "ledger", *flags]
            async with cli(args, tmp_path) as proc:
                await _interrupt_when(held, proc)  # two requests on the wire, four done
                release.set()  # what is on the wire finishes
                _, stderr = await proc.communicate()
                code = proc.returncode
            first = len(tap.exchanges)
            summary = read_summary(out)
            found = assert_each_once(out, lines_of(path, 12))

            resumed = await run_cli(["resume", summary["run_id"], *flags], tmp_path)
            stats = sim.stats()

        assert code == 3, stderr
        assert f"wem-der resume {summary['run_id']}" in stderr.decode()
        assert first == 6
        assert len(found["accepted"]) == 6
        assert len(found["failed"]) == 6
        assert all(line["reason"].startswith("not sent") for line in found["failed"])
        assert (summary["status"], summary["not_sent"], summary["records"]) == (
            "interrupted",
            6,
            12,
        )

        assert resumed.code == 0, resumed.stderr
        after = assert_each_once(out, lines_of(path, 12))
        assert len(after["accepted"]) == 12
        assert after["failed"] == []
        final = read_summary(out)
        assert (final["status"], final["accepted"], final["records"]) == ("finished", 12, 12)
        # The rest, and only the rest: one create each, nothing stored twice.
        assert [(e.method, e.status) for e in tap.exchanges[first:]] == [("POST", 200)] * 6
        assert {e.nmi for e in tap.exchanges[first:]} == {line["nmi"] for line in found["failed"]}
        assert (stats["installations"], stats["installation_versions"]) == (12, 12)
        # The lines of the first process are kept as they were.
        kept = {line["nmi"]: line for line in found["accepted"]}
        for line in after["accepted"]:
            if line["nmi"] in kept:
                assert line == kept[line["nmi"]]


async def test_a_second_ctrl_c_stops_at_once_and_resume_reads_back_the_wire(
    tmp_path: Path, tap: Tap
) -> None:
    """Two SIGINTs: exit 3 at once, naming the run. `resume` reads back the two writes that
    were on the wire before it sends them again, and sends the rest once."""
    async with asyncio.timeout(60):
        recs = records(8)
        path = write_jsonl(tmp_path / "in.jsonl", recs)
        out = tmp_path / "out"
        arrived = 0
        held = asyncio.Event()
        release = asyncio.Event()
        dropped: list[int] = []
        gone = asyncio.Event()

        async def latency(seconds: float) -> None:
            # Two answers at once; the third and fourth requests wait for the test, then
            # die with their client, unstored. Later requests (the resume's) pass.
            nonlocal arrived
            arrived += 1
            me = arrived
            if me == 4:
                held.set()
            if me in (3, 4):
                await release.wait()
                dropped.append(me)
                if len(dropped) == 2:
                    gone.set()
                raise ConnectionResetError("the client is gone")

        faults = FaultProfile(latency_ms=1)
        sim_cfg = sim_settings(faults=faults)
        async with Simulator(sim_cfg, sleep=latency, middlewares=[tap.middleware]) as sim:
            flags = endpoint_flags(sim, tmp_path)
            # The ledger plans: the simulator's latency counts the writes alone.
            args = ["submit", str(path), "--out", str(out), "--concurrency", "2"]
            args += ["--plan", "ledger", *flags]
            async with cli(args, tmp_path) as proc:
                said = await _interrupt_when(held, proc)  # two writes on the wire, two done
                proc.send_signal(signal.SIGINT)
                _, stderr = await proc.communicate()
                code = proc.returncode
            release.set()
            await gone.wait()
            run_id = run_id_of(out)
            first = len(tap.exchanges)
            resumed = await run_cli(["resume", run_id, *flags], tmp_path)
            stats = sim.stats()

        assert code == 3, stderr
        assert f"run {run_id}:" in said.decode()
        assert f"may have landed: `wem-der resume {run_id}`" in stderr.decode()
        assert resumed.code == 0, resumed.stderr
        after = assert_each_once(out, lines_of(path, 8))
        assert len(after["accepted"]) == 8
        resent = [(e.method, e.status) for e in tap.exchanges[first:]]
        assert sorted(resent) == [("GET", 404)] * 2 + [("POST", 200)] * 6
        # Each write left on the wire is read back first, and sent only when found absent.
        order = [(e.method, e.nmi) for e in tap.exchanges[first:]]
        for nmi in {nmi for method, nmi in order if method == "GET"}:
            assert order.index(("GET", nmi)) < order.index(("POST", nmi))
        assert (stats["installations"], stats["installation_versions"]) == (8, 8)


@FULL
async def test_a_full_disk_stops_the_run_with_a_message_and_resume_finishes_it(
    tmp_path: Path,
) -> None:
    """accepted.jsonl on a full device: exit 2 with the file, the cause and the resume
    command, no traceback; once there is room, `resume DIR` accounts for every record once,
    and the register holds each once."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(20))
        out = tmp_path / "out"
        out.mkdir(mode=0o700)
        (out / "accepted.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
        args = ["--no-progress", "--log-format", "json"]
        full = await run_cli(["submit", str(path), "--out", str(out), *args], tmp_path)
        (out / "accepted.jsonl").unlink()
        resumed = await run_cli(["resume", str(out), *args], tmp_path)

    assert full.code == 2, full.stderr
    assert "Traceback" not in full.stderr
    said = f"wem-der: cannot write {out / 'accepted.jsonl'}: No space left on device."
    assert said in full.stderr
    assert f"`wem-der resume {out}`" in full.stderr
    assert resumed.code == 0, resumed.stderr
    found = assert_each_once(out, lines_of(path, 20))
    assert len(found["accepted"]) == 20
    register = read_summary(out)["register"]
    assert (register["installations"], register["installation_versions"]) == (20, 20)


@contextmanager
def pipe_nobody_reads() -> Iterator[int]:
    """The write end of a pipe whose read end is closed: every write fails with EPIPE."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        yield writer
    finally:
        os.close(writer)


async def _submit_20(
    tmp_path: Path, *, redirect: str | None = None, stdout: int = PIPE, stderr: int = PIPE
) -> Done:
    """`wem-der submit` of 20 records, its streams as `run_cli` is told; every record must
    be accounted for once."""
    path = write_jsonl(tmp_path / "in.jsonl", records(20))
    args = [
        "submit", str(path), "--out", str(tmp_path / "out"), "--state-dir",
        str(tmp_path / "state"), "--no-progress", "--log-format", "json",
    ]  # fmt: skip
    async with asyncio.timeout(60):
        done = await run_cli(args, tmp_path, stdout=stdout, stderr=stderr, redirect=redirect)
    assert_each_once(tmp_path / "out", lines_of(path, 20))
    return done


@pytest.mark.parametrize(
    ("redirect", "closed_pipe", "reason"),
    [
        pytest.param("2>/dev/full", False, "No space left on device", marks=FULL, id="full"),
        pytest.param(None, True, "Broken pipe", id="pipe-nobody-reads"),
        pytest.param("2>&-", False, "closed when the process started", id="closed"),
    ],
)
async def test_a_log_that_cannot_be_written_does_not_stop_the_run(
    tmp_path: Path, redirect: str | None, closed_pipe: bool, reason: str
) -> None:
    """stderr on a full disk, on a pipe whose reader has gone (`2>&1 | head`), or closed
    (`2>&-`): every record still goes through, and the summary says what the log lost and
    why."""
    with pipe_nobody_reads() if closed_pipe else nullcontext(PIPE) as stderr:
        done = await _submit_20(tmp_path, redirect=redirect, stderr=stderr)

    assert done.code == 0, done.stdout
    summary = read_summary(tmp_path / "out")
    assert summary["accepted"] == 20
    # The run's own line, the token's and one per record, at least: all of them lost.
    lost = re.fullmatch(r"(\d+) lines not written from \S+Z: (.+)", summary["stderr_lost"])
    assert lost is not None, summary["stderr_lost"]
    assert int(lost[1]) >= 22
    assert lost[2] == reason
    assert re.search(rf"\n +log lost +{re.escape(summary['stderr_lost'])}\n", done.stdout)


async def test_the_progress_bar_on_a_stderr_that_fails_does_not_stop_the_run() -> None:
    """The terminal under the bar gone away: the bar's lines are counted as lost, as the
    log's are, and nothing raises."""
    loss = Loss()
    with pipe_nobody_reads() as writer, open(writer, "w", closefd=False) as stream:
        # As the CLI hands it over: sys.stderr, guarded (cli/guarded_output.py).
        guarded = cast(TextIO, GuardedStream(stream, loss))
        terminal = Console(file=guarded, force_terminal=True)
        bar = Progress(total=2, console=terminal)
        bar.start()
        bar.on_outcome(
            OutcomeRecord(RecordKind.INSTALLATION, "8001000001", SourceRef("in"), Outcome.ACCEPTED)
        )
        await bar.stop()
    assert loss.failure is not None
    assert loss.failure[1] == "Broken pipe"
    assert loss.lines >= 1  # the bar's last line, at least


@pytest.mark.parametrize(
    ("redirect", "closed_pipe"),
    [
        pytest.param(">&-", False, id="closed"),
        pytest.param(">/dev/full", False, marks=FULL, id="full"),
        pytest.param(None, True, id="pipe-nobody-reads"),
    ],
)
async def test_a_stdout_that_cannot_be_written_does_not_stop_the_run(
    tmp_path: Path, redirect: str | None, closed_pipe: bool
) -> None:
    """stdout closed (`>&-`), on a full disk, or on a pipe whose reader has gone (`| head`):
    the closing table has nowhere to go, and the run is what it would have been."""
    with pipe_nobody_reads() if closed_pipe else nullcontext(PIPE) as stdout:
        done = await _submit_20(tmp_path, redirect=redirect, stdout=stdout)

    assert done.code == 0, done.stderr
    assert done.stdout == ""  # nothing reached the test: stdout really was elsewhere
    assert "Traceback" not in done.stderr
    summary = read_summary(tmp_path / "out")
    assert (summary["accepted"], summary["status"]) == (20, "finished")
    assert "stderr_lost" not in summary
