"""Helpers for the end-to-end tests of `submit`: the simulator, a run aimed at it, and what
came out (outcome files, summary) and what went over the wire (a tap on the simulator).

    Simulator(sim_settings(...)) --real HTTP on 127.0.0.1--> execute(run_settings(sim, ...))
         \\-- Tap: every DER request as it arrived          \\-- out/*.jsonl, summary.json

The tap is a middleware the simulator runs around its own gateway (`Simulator(...,
middlewares=[tap.middleware])`), so it sees each request with its headers and raw body, and
the answer with its transaction id. A test that moves time shares one
`wem_der.testing.VirtualClock` between the simulator and the run.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import os
import sys
import time
import zlib
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import SecretStr
from wem_der.config import Settings
from wem_der.records.outcomes import Outcome
from wem_der.records.samples import installations
from wem_der.records.shapes import RecordKind
from wem_der.run.plan import RunPlan
from wem_der.run.results import RunResult
from wem_der.run.wiring import Clock, Hooks, Sleep, execute, new_run_id
from wem_der.simulator import Simulator, SimulatorSettings
from wem_der.simulator.app import INSTALLATION_PREFIX, NMI_PREFIX, Handler
from wem_der.simulator.state import STATE

CLIENT_ID = "e2e-client"
SECRET = "e2e-secret-7f3a9c"  # a throwaway secret the simulator is told to expect
PARTICIPANT = "E2ENSP"
SUMMARY_KEYS = frozenset(
    {
        "records",
        "accepted",
        "conditional",
        "rejected",
        "invalid",
        "failed",
        "requests",
        "http_429",
        "elapsed_s",
        "max_requests_in_window",
    }
)
PYTHON = sys.executable
_DER_PREFIXES = (INSTALLATION_PREFIX + "/", NMI_PREFIX + "/")


def sim_settings(**overrides: Any) -> SimulatorSettings:
    """A simulator that expects this module's client id and secret."""
    base: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": SecretStr(SECRET)}
    return SimulatorSettings(**(base | overrides))


def run_settings(sim: Simulator, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings aimed at `sim`, with state in `tmp_path` and retries that never wait."""
    base: dict[str, Any] = {
        "env": "e2e",
        "token_url": sim.token_url,
        "base_url": sim.installation_url,
        "nmi_base_url": sim.nmi_url,
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(SECRET),
        "participant_id": PARTICIPANT,
        "state_dir": tmp_path / "state",
        "concurrency": 4,
        "base_delay_s": 0,
        "max_delay_s": 0,
        "timeout_s": 10,
        # The ledger alone plans, so that a test counts its writes; tests of the plan
        # from the register ask for it (tests/test_plan_register.py).
        "plan": "ledger",
    }
    return Settings(**(base | overrides))


def scripted_settings(url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings aimed at a `tests.scripted` server: token at /oauth/token, APIs under /der."""
    base: dict[str, Any] = {
        "env": "e2e",
        "token_url": url + "/oauth/token",
        "base_url": url + "/der",
        "nmi_base_url": url + "/der",
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(SECRET),
        "participant_id": PARTICIPANT,
        "state_dir": tmp_path / "state",
        "concurrency": 1,
        "base_delay_s": 0,
        "max_delay_s": 0,
        "timeout_s": 10,
        # A scripted server answers the writes of its script: the ledger alone plans.
        "plan": "ledger",
    }
    return Settings(**(base | overrides))


TOKEN_BODY = {"acess_token": "scripted-token", "access_token_expires_in": "3599"}


def make_plan(
    tmp_path: Path,
    inputs: Sequence[Path | str],
    *,
    out: str = "out",
    kind: RecordKind = RecordKind.INSTALLATION,
    force: bool = False,
) -> RunPlan:
    return RunPlan(
        run_id=new_run_id(),
        kind=kind,
        inputs=tuple(str(p) for p in inputs),
        out_dir=str(tmp_path / out),
        force=force,
    )


async def submit(
    settings: Settings,
    tmp_path: Path,
    inputs: Sequence[Path | str],
    *,
    out: str = "out",
    hooks: Hooks | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> RunResult:
    """One `submit` run of `inputs` into `tmp_path/out`."""
    plan = make_plan(tmp_path, inputs, out=out)
    return await execute(settings, plan, hooks=hooks or Hooks(), clock=clock, sleep=sleep)


def records(count: int, *, start: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Realistic installation records that the simulator accepts without exceptions."""
    return list(installations(count, seed=seed, start=start))


def write_jsonl(path: Path, items: Iterable[object]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))
    return path


# -- what came out ------------------------------------------------------------------------


def read_outcomes(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every outcome line, by outcome file ("accepted", "failed", ...)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for outcome in Outcome:
        path = out_dir / f"{outcome.value}.jsonl"
        found[outcome.value] = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return found


def read_summary(out_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads((out_dir / "summary.json").read_bytes())
    return summary


def read_problems(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "problems.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def source_key(line: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    source = line["source"]
    return (source["path"], source.get("line"), source.get("index"))


def assert_each_once(
    out_dir: Path, expected: Iterable[tuple[str, int | None, int | None]]
) -> dict[str, list[dict[str, Any]]]:
    """Every expected input position is in exactly one outcome file, once; nothing else is."""
    found = read_outcomes(out_dir)
    seen = [source_key(line) for lines in found.values() for line in lines]
    assert sorted(seen, key=str) == sorted(expected, key=str)
    # Each line is in the file of its own outcome.
    for outcome, lines in found.items():
        assert all(line["outcome"] == outcome for line in lines), outcome
    return found


def lines_of(path: Path, count: int) -> list[tuple[str, int | None, int | None]]:
    """The input positions of a JSONL file of `count` records."""
    return [(str(path), n, None) for n in range(1, count + 1)]


# -- what went over the wire ----------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One DER request as the simulator received it, and its answer."""

    at: float  # the simulator's clock when the request arrived
    done: float  # ... and when the answer left
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    raw: bytes | None  # the body as sent (still compressed); None if unreadable
    status: int | None  # None: the connection was dropped without an answer
    transaction_id: str | None
    data: Any

    @property
    def nmi(self) -> str | None:
        """The NMI the request was about: from the path, else from the body."""
        last = self.path.rstrip("/").rsplit("/", 1)[-1]
        if self.method in ("PUT", "GET") and last.isdigit():
            return last
        body = self.decoded()
        if isinstance(body, dict):
            inner = body.get("data", body)
            if isinstance(inner, dict) and isinstance(inner.get("nmi"), str):
                return str(inner["nmi"])
        return None

    def decoded(self) -> Any:
        if not self.raw:
            return None
        encoding = self.headers.get("Content-Encoding", "")
        raw = self.raw
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        return orjson.loads(raw)


@dataclass
class Tap:
    """What a simulator saw, in arrival order: pass `middlewares=[tap.middleware]` to it."""

    exchanges: list[Exchange] = field(default_factory=list)

    def writes(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method in ("POST", "PUT")]

    def for_nmi(self, nmi: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.nmi == nmi]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Around the simulator's gateway: each DER request, when it came and went, and how
        it was answered."""
        if not request.path.startswith(_DER_PREFIXES):
            return await handler(request)
        clock = request.app[STATE].clock
        at = clock()
        response = await handler(request)
        transport = request.transport
        dropped = transport is None or transport.is_closing()
        raw = None if dropped or not request.body_exists else await request.read()
        body = getattr(response, "body", None)
        answer: Any = orjson.loads(body) if isinstance(body, bytes) and body else {}
        self.exchanges.append(
            Exchange(
                at=at,
                done=clock(),
                method=request.method,
                path=request.path,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                raw=raw,
                status=None if dropped else response.status,
                # A search may answer a bare list of records [spec]: no envelope.
                transaction_id=answer.get("transactionId") if isinstance(answer, dict) else None,
                data=answer.get("data") if isinstance(answer, dict) else answer,
            )
        )
        return response


# -- the command line ------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr (--log-format json)."""
        return [orjson.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]


def clean_environ() -> dict[str, str]:
    # The operator's own WEMDER_* settings must not leak into a test run.
    return {k: v for k, v in os.environ.items() if not k.startswith("WEMDER_")}


@asynccontextmanager
async def cli(
    args: Sequence[str],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    umask: int = -1,
    stdin: int = PIPE,
    stdout: int = PIPE,
    stderr: int = PIPE,
    redirect: str | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m wem_der ARGS`; killed if the test leaves before it ends.

    Each stream is PIPE, DEVNULL or a file descriptor. `env` goes on top of a WEMDER_-free
    environment; `umask` -1 keeps ours. `redirect`, sh syntax such as `2>&-`, `>&-` or
    `2>/dev/full`, is applied to the child's streams after those: the command then runs as
    `sh -c 'exec "$@" REDIRECT' sh PYTHON -m wem_der ARGS`.
    """
    argv = [PYTHON, "-m", "wem_der", *args]
    if redirect is not None:
        argv = ["sh", "-c", f'exec "$@" {redirect}', "sh", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=stdout, stderr=stderr,
        env=clean_environ() | dict(env or {}), cwd=cwd, umask=umask,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_cli(
    args: Sequence[str],
    cwd: Path,
    stdin: bytes = b"",
    *,
    stdout: int = PIPE,
    stderr: int = PIPE,
    redirect: str | None = None,
) -> Done:
    """`python -m wem_der ARGS` to its end, `stdin` on its standard input; a stream given
    as a file descriptor (not PIPE) is "" in the result. `redirect` as for `cli`."""
    async with cli(args, cwd, stdout=stdout, stderr=stderr, redirect=redirect) as proc:
        out, err = await proc.communicate(stdin)
        assert proc.returncode is not None
        return Done(proc.returncode, (out or b"").decode(), (err or b"").decode())


async def wem_der(
    args: Sequence[str],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    umask: int = -1,
    timeout_s: float = 60,
) -> Done:
    """`python -m wem_der ARGS` to its end (killed after `timeout_s`), stdin empty, `env` on
    top of a WEMDER_-free environment; `umask` -1 keeps ours."""
    async with cli(args, cwd, env=env, umask=umask, stdin=DEVNULL) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        assert proc.returncode is not None
        return Done(proc.returncode, out.decode(), err.decode())


def endpoint_flags(sim: Simulator, tmp_path: Path, secret: str = SECRET) -> list[str]:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret + "\n", encoding="utf-8")
    return [
        "--base-url", sim.installation_url,
        "--nmi-base-url", sim.nmi_url,
        "--token-url", sim.token_url,
        "--client-id", CLIENT_ID,
        "--client-secret-file", str(secret_file),
        "--participant-id", PARTICIPANT,
        "--state-dir", str(tmp_path / "state"),
        "--no-progress",
        "--log-format", "json",
    ]  # fmt: skip
