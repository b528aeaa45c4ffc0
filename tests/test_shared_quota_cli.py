"""The quota shared by real `wem-der` processes, judged by the simulator's own count.

The simulator runs in a process of its own at a short quota (20 a second) and counts
every request that reaches it, so its fullest window and its 429s say whether the jobs
together kept to the quota: two submits from one state directory, kill -9 and resume
within the period, two submits through Redis, and a Redis lost for good.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from wem_der.run.start import LEDGER_FILE

from tests.e2e import read_summary, records, write_jsonl
from tests.processes import (
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
from tests.redis_server import RedisServer, free_port

RATE = "20/1s"
WAIT_S = 60


@pytest.fixture
def quota_sim(tmp_path: Path) -> Iterator[Sim]:
    """A simulator process of the test's own that allows 20 requests in any second."""
    with simulator(tmp_path / "sim", "--quota", RATE) as running:
        yield running


def submit_args(sim: Sim, tmp_path: Path, name: str, count: int, *, first: int = 0) -> list[str]:
    """`submit` of `count` records (NMIs from `first` on) into `tmp_path/name`, at RATE."""
    tmp_path.mkdir(exist_ok=True)
    path = write_jsonl(tmp_path / f"{name}.jsonl", records(count, start=first))
    out, state = tmp_path / name, tmp_path / "state"
    return ["submit", str(path), "--out", str(out), *sim.flags(state), "--rate-limit", RATE]


def resume_args(sim: Sim, out: Path, *extra: str) -> list[str]:
    secret = str(sim.secret_file)
    return ["resume", str(out), "--client-secret-file", secret, "--no-progress", *extra]


def finish(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for `proc` and check that it accounted for every record (exit 0)."""
    assert proc.wait(timeout=WAIT_S) == 0, log.read_text()


def run_together(tmp_path: Path, *jobs: list[str]) -> None:
    """Start a `wem-der` process for each argument list of `jobs` at once, and check that
    each accounted for every record (exit 0)."""
    logs = [tmp_path / f"job-{n}.log" for n in range(len(jobs))]
    procs = []
    try:
        for args, log in zip(jobs, logs, strict=True):
            procs.append(start(*args, log=log))
        for proc, log in zip(procs, logs, strict=True):
            finish(proc, log)
    finally:
        for proc in procs:
            stop(proc)


def assert_quota_kept(sim: Sim) -> None:
    stats = sim.stats()
    assert stats["max_requests_in_window"] <= 20, stats
    assert stats["http_429"] == 0, stats


def assert_all_accepted(out: Path, count: int) -> None:
    assert sorted(line["outcome"] for line in outcome_lines(out)) == ["accepted"] * count


def test_two_submits_from_one_state_directory_keep_the_quota_together(
    quota_sim: Sim, tmp_path: Path
) -> None:
    """Started together on one state directory: no second at the register holds over 20
    of their requests, and no 429."""
    run_together(
        tmp_path,
        submit_args(quota_sim, tmp_path, "a", 50),
        submit_args(quota_sim, tmp_path, "b", 50, first=50),
    )
    assert_quota_kept(quota_sim)
    for name in "ab":
        assert_all_accepted(tmp_path / name, 50)


def test_kill9_and_resume_within_the_period_keep_the_quota(quota_sim: Sim, tmp_path: Path) -> None:
    """Killed three times, each time resumed at once: the resumed process counts what the
    killed one sent in the last second, so no window is over the quota; and the summary of
    the run counts the requests of every process that worked on it."""
    args = submit_args(quota_sim, tmp_path, "out", 80)
    out = tmp_path / "out"
    proc = start(*args, log=tmp_path / "run-0.log")
    try:
        for n, point in enumerate((15, 30, 45)):
            lines = partial(has_lines, out, point)
            wait_until(proc, lines, timeout_s=WAIT_S, what=f"{point} outcomes")
            assert proc.poll() is None, (tmp_path / f"run-{n}.log").read_text()
            kill9(proc)
            proc = start(*resume_args(quota_sim, out), log=tmp_path / f"run-{n + 1}.log")
        finish(proc, tmp_path / "run-3.log")
    finally:
        stop(proc)
    assert_quota_kept(quota_sim)
    assert_all_accepted(out, 80)
    received = quota_sim.stats()["der_requests_received"]
    summary = read_summary(out)
    # The ledger has the finished write attempts of the killed processes; not counted are
    # those on the wire when each was killed (at most one per worker, 20, each of 3
    # times), and the read-backs of those by the processes resumed before the last (as
    # many, each of 2 times).
    assert received - (3 + 2) * 20 <= summary["requests"] <= received
    # Every finished write of every process, the killed ones' included, whose share the
    # last one's own count would leave out.
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / LEDGER_FILE)) as ledger:
        [(written,)] = ledger.execute(
            "SELECT COUNT(*) FROM attempts WHERE finished_at IS NOT NULL"
        ).fetchall()
    assert summary["requests"] >= written > 0
    assert summary["http_429"] == 0


def test_two_submits_through_redis_keep_the_quota_together(
    quota_sim: Sim, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two submits with state directories of their own, as on two hosts, sharing the quota
    through Redis: no window over 20 at the register, no 429."""
    store = ("--quota-store", redis_server.url)
    run_together(
        tmp_path,
        *(
            [*submit_args(quota_sim, tmp_path / name, "out", 50, first=50 * n), *store]
            for n, name in enumerate("ab")
        ),
    )
    assert_quota_kept(quota_sim)
    for name in "ab":
        assert_all_accepted(tmp_path / name / "out", 50)


def test_a_redis_lost_for_good_stops_the_run_and_resume_finishes_it(
    quota_sim: Sim, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis gone mid-run for longer than allowed: exit 3 naming the `wem-der resume` that
    finishes the run, which it does once Redis is back."""
    out = tmp_path / "out"
    args = [*submit_args(quota_sim, tmp_path, "out", 60), "--quota-store", redis_server.url]
    log = tmp_path / "run.log"
    proc = start(*args, log=log, env={"WEMDER_QUOTA_STORE_WAIT_S": "0.5"})
    try:
        wait_until(proc, partial(has_lines, out, 10), timeout_s=WAIT_S, what="10 outcomes")
        redis_server.stop()
        assert proc.wait(timeout=WAIT_S) == 3, log.read_text()
    finally:
        stop(proc)
    said = log.read_text()
    assert f"the quota store {redis_server.url} did not answer" in said
    assert f"wem-der resume {run_id_of(out)}" in said
    redis_server.start()
    done = wem_der(*resume_args(quota_sim, out, "--quota-store", redis_server.url))
    assert done.code == 0, done.output
    assert_all_accepted(out, 60)
    assert_quota_kept(quota_sim)


def test_an_unreachable_redis_is_a_configuration_error(quota_sim: Sim, tmp_path: Path) -> None:
    """No Redis at --quota-store: exit 2 before anything is sent, naming the URL without
    its password."""
    port = free_port()
    store = f"redis://:pa55word@127.0.0.1:{port}/0"
    done = wem_der(*submit_args(quota_sim, tmp_path, "out", 5), "--quota-store", store)
    assert done.code == 2, done.output
    assert f"cannot reach the quota store redis://127.0.0.1:{port}/0" in done.stderr
    assert "pa55word" not in done.output
    assert quota_sim.stats()["der_requests_received"] == 0
