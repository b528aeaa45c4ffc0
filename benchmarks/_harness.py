"""What every benchmark shares: a simulator in its own process, child processes measured
by the kernel, generated inputs, tables and result files.

    benchmark (parent) --spawns--> simulator process  (python -m benchmarks._simproc)
                       --spawns--> client process     (wem-der, or a peer) --HTTP--> simulator
                       <--wait4--  client's CPU time and peak RSS, from the kernel
                       <--HTTP---  simulator's counters and arrival log

Everything listens on and talks to 127.0.0.1 only. Every wait has a deadline: a child
that overruns is killed (by its own pid) and the benchmark fails with the command line.
"""

from __future__ import annotations

import base64
import contextlib
import os
import platform
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from wem_der.records.samples import installations

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
PYTHON = sys.executable
LAUNCHER = REPO / "benchmarks" / "_launch.py"
# `python -m wem_der` is the `wem-der` console script, without depending on PATH.
WEM_DER = (PYTHON, "-m", "wem_der")
CLIENT_ID = "bench-client"
PARTICIPANT_ID = "BENCHNSP"
# A quota no benchmark run comes near: "the quota lifted".
LIFTED_QUOTA = "1000000/1s"
HTTP_TIMEOUT_S = 60.0


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (a crash, a timeout, bad output)."""


# -- machine and results --------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def machine_info() -> dict[str, Any]:
    """What a figure depends on: the machine, the interpreter, the libraries, the commit."""
    import aiohttp

    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "orjson": orjson.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        # Others edit the working tree: say whether it differed from the commit.
        "git_dirty": bool(_git("status", "--porcelain", "--", "pipeline")),
        "load_average": os.getloadavg(),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write `benchmarks/results/NAME.json` with the machine and the time beside `data`."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **data,
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


# -- inputs and work directories ------------------------------------------------------


@contextlib.contextmanager
def workdir(name: str, keep: bool = False) -> Iterator[Path]:
    """A scratch directory for one benchmark run, removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=f"wem-der-bench-{name}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"(kept {path})", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def write_installations(
    path: Path, count: int, *, start: int = 0, seed: int = 0, nmi_prefix: str | None = None
) -> Path:
    """`count` realistic installation records as JSON Lines (NMIs from `start`).

    `nmi_prefix` replaces the first four characters of each NMI, to draw NMIs from a range
    `wem_der.records.samples` does not reach (its NMIs are 8001 and six digits).
    """
    with path.open("wb") as fh:
        batch: list[bytes] = []
        for record in installations(count, seed=seed, start=start):
            if nmi_prefix is not None:
                record["nmi"] = nmi_prefix + record["nmi"][4:]
            batch.append(orjson.dumps(record))
            if len(batch) >= 4096:
                fh.write(b"\n".join(batch) + b"\n")
                batch = []
        if batch:
            fh.write(b"\n".join(batch) + b"\n")
    return path


def read_jsonl(path: Path) -> Iterator[Any]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


# -- child processes ------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A child process that ran to its end, as the kernel accounted it (wait4)."""

    command: list[str]
    returncode: int
    started_at: float  # time.monotonic() just before the spawn
    ended_at: float  # time.monotonic() when wait4 returned
    user_s: float
    sys_s: float
    maxrss_mb: float

    @property
    def wall_s(self) -> float:
        return self.ended_at - self.started_at

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "wall_s": self.wall_s, "cpu_s": self.cpu_s}


def run_measured(
    command: Sequence[str],
    *,
    timeout_s: float,
    stdout: Path | None = None,
    stderr: Path | None = None,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
    check: bool = True,
    name: str = "",
) -> Measured:
    """Run `command` to its end and return what it cost, as the kernel accounted it.

    It runs under `benchmarks/_launch.py`, which forks and execs it and reads its cost
    with wait4, so its peak RSS is its own and not this process's (see there). Its output
    goes to files (never a pipe that could fill and stall it). Killed, and BenchError
    raised, after `timeout_s`; with `check`, a non-zero exit raises too. The error starts
    with `name` and ends with the last lines of `stderr`.
    """
    cmd = [str(part) for part in command]

    def failed(why: str) -> BenchError:
        said = f"\n{tail(stderr)}" if stderr else ""
        return BenchError(f"{name}: {why}{said}" if name else f"{why}{said}")

    with tempfile.TemporaryDirectory(prefix="wem-der-bench-launch-") as scratch:
        report = Path(scratch) / "report.json"
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(stdout.open("wb")) if stdout else subprocess.DEVNULL
            err = stack.enter_context(stderr.open("wb")) if stderr else subprocess.DEVNULL
            proc = subprocess.Popen(
                [PYTHON, "-S", str(LAUNCHER), str(report), str(timeout_s), *cmd],
                cwd=cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # its own group: the backstop below ends it whole
            )
            try:
                proc.wait(timeout=timeout_s + 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, by its id
                proc.wait(timeout=60)
        if proc.returncode != 0 or not report.exists():
            raise failed(f"the launcher failed ({proc.returncode}) running: {' '.join(cmd)}")
        cost = orjson.loads(report.read_bytes())
    measured = Measured(
        command=cmd,
        returncode=cost["returncode"],
        started_at=cost["started_at"],
        ended_at=cost["ended_at"],
        user_s=cost["user_s"],
        sys_s=cost["sys_s"],
        maxrss_mb=cost["maxrss_kib"] / 1024,
    )
    if cost["timed_out"]:
        raise failed(f"timed out after {timeout_s:.0f} s and killed: {' '.join(cmd)}")
    if check and measured.returncode != 0:
        where = f"; its stderr is in {stderr}" if stderr else ""
        raise failed(f"exit code {measured.returncode} from: {' '.join(cmd)}{where}")
    return measured


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the simulator process ------------------------------------------------------------


def http_json(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = HTTP_TIMEOUT_S,
) -> Any:
    """One request to a loopback URL; the decoded JSON answer."""
    if not url.startswith("http://127.0.0.1:"):
        raise BenchError(f"benchmarks only talk to 127.0.0.1, not {url}")
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return orjson.loads(response.read())


@dataclass
class SimProcess:
    """A running simulator process and what clients need to reach it."""

    pid: int
    base_url: str
    token_url: str
    installation_url: str
    nmi_url: str
    control_url: str
    secret_file: Path
    log: Path
    client_id: str = CLIENT_ID
    participant_id: str = PARTICIPANT_ID
    _token: str | None = field(default=None, repr=False)

    def stats(self) -> dict[str, Any]:
        """GET /_sim/stats: the register's counters (max window, 429s, records held)."""
        return dict(http_json("GET", self.base_url + "/_sim/stats"))

    def reset(self) -> None:
        """Forget records, counters, quota history and the arrival log (tokens stay valid)."""
        http_json("POST", self.base_url + "/_sim/reset", body=b"")

    def stored_nmis(self) -> set[str]:
        """The NMIs of every installation the register holds (GET /_sim/records)."""
        doc = http_json("GET", self.base_url + "/_sim/records")
        return {item["data"]["nmi"] for item in doc["installations"]}

    def arrivals(self) -> list[float]:
        """time.monotonic() of every DER request since the last reset, in arrival order."""
        return list(http_json("GET", self.control_url + "/arrivals")["arrivals"])

    def secret(self) -> str:
        return self.secret_file.read_text(encoding="utf-8").strip()

    def basic_auth(self) -> str:
        pair = f"{self.client_id}:{self.secret()}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def token(self) -> str:
        """A bearer token (cached; the simulator's tokens live an hour)."""
        if self._token is None:
            doc = http_json(
                "POST",
                self.token_url + "?grant_type=client_credentials",
                body=b"",
                headers={"Authorization": self.basic_auth()},
            )
            self._token = str(doc["acess_token"])  # AEMO's spelling [spec]
        return self._token

    def wem_der_flags(self) -> list[str]:
        """The `wem-der submit/resume` flags that point it at this simulator."""
        return [
            "--base-url", self.installation_url,
            "--nmi-base-url", self.nmi_url,
            "--token-url", self.token_url,
            "--client-id", self.client_id,
            "--client-secret-file", str(self.secret_file),
            "--participant-id", self.participant_id,
            "--log-format", "json",
            "--no-progress",
        ]  # fmt: skip


@contextlib.contextmanager
def simulator(
    directory: Path,
    *,
    quota: str = LIFTED_QUOTA,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    extra_flags: Sequence[str] = (),
    ready_timeout_s: float = 60.0,
) -> Iterator[SimProcess]:
    """Start the simulator in its own process; stop it (by its pid) on the way out.

    `latency_ms` + `jitter_ms` is a delay drawn uniformly from
    [latency_ms, latency_ms + jitter_ms] per request: 50 +- 30 ms is 20 and 60.
    `extra_flags` are more `wem-der simulate` flags (fault rates, say).
    """
    directory.mkdir(parents=True, exist_ok=True)
    secret_file = directory / "client-secret"
    secret_file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    log = directory / "simulator.log"
    command = [
        PYTHON, "-m", "benchmarks._simproc",
        "--host", "127.0.0.1", "--port", "0",
        "--client-id", CLIENT_ID, "--client-secret-file", str(secret_file),
        "--quota", quota, "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms),
        *extra_flags,
    ]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
        )
    try:
        ready = _read_ready_line(proc, ready_timeout_s, log)
        yield SimProcess(
            pid=proc.pid,
            base_url=ready["base_url"],
            token_url=ready["token_url"],
            installation_url=ready["installation_url"],
            nmi_url=ready["nmi_url"],
            control_url=ready["control_url"],
            secret_file=secret_file,
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


def _read_ready_line(proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> dict[str, Any]:
    assert proc.stdout is not None  # Popen(stdout=PIPE) sets it
    deadline = time.monotonic() + timeout_s
    buffered = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffered:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise BenchError(
                    f"the simulator did not start within {timeout_s:.0f} s:\n{tail(log)}"
                )
            if selector.select(timeout=min(remaining, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                buffered += chunk
    return dict(orjson.loads(buffered.split(b"\n", 1)[0]))


# -- arrival-log arithmetic -----------------------------------------------------------


def fullest_window(arrivals: Sequence[float], period_s: float) -> int:
    """The most arrivals in any window (t - period_s, t], exactly as the simulator counts."""
    best = 0
    left = 0
    for right, now in enumerate(arrivals):
        while arrivals[left] <= now - period_s:
            left += 1
        best = max(best, right - left + 1)
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; `values` need not be sorted."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


# -- wem-der's own output -------------------------------------------------------------


def wem_der_summary(out_dir: Path) -> dict[str, Any]:
    """The run's summary.json."""
    return dict(orjson.loads((out_dir / "summary.json").read_bytes()))


def wem_der_outcomes(out_dir: Path) -> dict[str, str]:
    """NMI -> outcome class, from the run's outcome files (the last line of an NMI wins)."""
    found: dict[str, str] = {}
    for path in sorted(out_dir.glob("*.jsonl")):
        for line in read_jsonl(path):
            if line.get("nmi"):
                found[line["nmi"]] = line["outcome"]
    return found
