"""`wem-der` and its simulator as real processes, for kill -9 and command-line tests.

The simulator runs in its own process with a SQLite store, so it outlives every `wem-der`
process a test kills. The only waits are bounded polls for another process to reach a
point (a file appearing, a count of outcome lines): subprocess coordination, each with a
deadline, never a sleep standing in for a result.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from wem_der.records.outcomes import Outcome

from tests.e2e import PYTHON, Done, clean_environ

# A secret the tests can look for in everything the tool writes: it must appear nowhere.
SECRET = "s3cret-" + "x7Q2" * 6
CLIENT_ID = "local-client"  # the simulator's default, so it is given no --client-id
RUN_TIMEOUT_S = 60.0
POLL_S = 0.005


def _environ() -> dict[str, str]:
    # No WEMDER_* from the developer's shell; logs as JSON lines (stderr is not a terminal),
    # unbuffered so that a log read while the process runs is up to date.
    return clean_environ() | {"PYTHONUNBUFFERED": "1"}


def wait_until(
    proc: subprocess.Popen[bytes], condition: Callable[[], bool], *, timeout_s: float, what: str
) -> None:
    """Wait until `condition` holds or `proc` has ended, whichever comes first."""
    wait_for(lambda: proc.poll() is not None or condition(), timeout_s=timeout_s, what=what)


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


@dataclass
class Sim:
    """A simulator process and how to reach it."""

    proc: subprocess.Popen[bytes]
    base_url: str
    secret_file: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as resp:
            return orjson.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/_sim/stats"))

    def installations(self) -> list[dict[str, Any]]:
        """The stored installations (`data` only), as `GET /_sim/records` lists them."""
        return [entry["data"] for entry in self.get("/_sim/records")["installations"]]

    def reset(self) -> None:
        request = urllib.request.Request(self.base_url + "/_sim/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def flags(self, state_dir: Path) -> list[str]:
        """Everything `submit` needs to reach this simulator, the secret from a file."""
        return [
            "--base-url",
            self.base_url + "/v2/der-register",
            "--nmi-base-url",
            self.base_url + "/wem/v1/der-register",
            "--token-url",
            self.base_url + "/oauth/v1/token",
            "--client-id",
            CLIENT_ID,
            "--client-secret-file",
            str(self.secret_file),
            "--participant-id",
            "TESTNSP",
            "--state-dir",
            str(state_dir),
            "--no-progress",
        ]


@contextmanager
def simulator(directory: Path, *flags: str) -> Iterator[Sim]:
    """A simulator process (SQLite store in `directory`) for the length of the block."""
    directory.mkdir(parents=True, exist_ok=True)
    secret_file = directory / "client-secret"
    secret_file.write_text(SECRET + "\n")
    out = directory / "simulator.out"
    with out.open("wb") as stdout, (directory / "simulator.err").open("wb") as stderr:
        command = [PYTHON, "-m", "wem_der", "simulate", "--port", "0"]
        command += ["--db", str(directory / "register.sqlite3")]
        command += ["--client-secret-file", str(secret_file), *flags]
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=_environ())
    try:
        found: list[str] = []

        def started() -> bool:
            assert proc.poll() is None, (directory / "simulator.err").read_text()
            found[:] = re.findall(r"simulator on (http://\S+)", out.read_text())
            return "Stats:" in out.read_text() and bool(found)

        wait_for(started, timeout_s=20, what="the simulator to listen")
        yield Sim(proc, found[0], secret_file)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wem_der(*args: str) -> Result:
    """Run `wem-der ARGS` to its end."""
    done = subprocess.run(
        [PYTHON, "-m", "wem_der", *args],
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        env=_environ(),
        check=False,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def start(
    *args: str, log: Path, stdin: int | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `wem-der ARGS` in the background (output in `log`), for a test to kill;
    `stdin` as for `subprocess.Popen` (PIPE: the test writes the records); `env` on top of
    a WEMDER_-free environment."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [PYTHON, "-m", "wem_der", *args],
            stdin=stdin,
            stdout=sink,
            stderr=sink,
            env=_environ() | dict(env or {}),
        )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no handler runs, nothing is flushed or closed by the process itself."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Leave no process behind when a test fails half-way."""
    if proc.poll() is None:
        kill9(proc)


class Result(Done):
    """A finished `wem-der` process; `output` is both streams, for failure messages."""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def outcome_lines(out_dir: Path) -> list[dict[str, Any]]:
    """Every line of every outcome file of `out_dir`."""
    lines = []
    for outcome in Outcome:
        path = out_dir / f"{outcome.value}.jsonl"
        if path.exists():
            lines += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return lines


def count_lines(out_dir: Path) -> int:
    """How many outcome lines `out_dir` holds now (for deciding when to kill)."""
    total = 0
    for outcome in Outcome:
        with suppress(FileNotFoundError):
            total += (out_dir / f"{outcome.value}.jsonl").read_bytes().count(b"\n")
    return total


def has_lines(out_dir: Path, count: int) -> bool:
    """Whether `out_dir` holds `count` outcome lines or more by now."""
    return count_lines(out_dir) >= count


def run_id_of(out_dir: Path) -> str:
    return str(orjson.loads((out_dir / "run.json").read_bytes())["run_id"])
