"""Peers: wem-der against the other ways of sending the same records under the same quota.

    python -m benchmarks.peers [--records 600] [--quota 300/3s] [--skip-newman]

One simulator, in its own process: a 300/3s quota (short, so walls stay short; the
shape is that of 6000/60s) and 50 +- 30 ms per answer. The register is reset before each
approach, and every approach sends the same generated records, each in its own process:

  (a) sequential   one keep-alive connection, one record at a time, paced to the quota,
                   a 429 retried after 1 s (benchmarks/peers/sequential.py)
  (b) newman       Postman's runner: a collection and a data file, one iteration per
                   record (benchmarks/peers/*.postman_collection.json, newman_data.py)
  (c) aiolimiter   `AsyncLimiter(COUNT, PERIOD)` + asyncio.gather, no retry
                   (benchmarks/peers/aiolimiter_gather.py); (c') the same, a 429 retried
                   after 1 s up to 5 times
  (d) wem-der      `wem-der submit FILE --rate-limit COUNT/PERIOD`

Reported for each: wall time (process start to exit), 429s and the fullest window (from
the simulator), how many records the approach can tell you the outcome of (its own output
says stored, or says not stored), how many the register actually holds, and how many
records its account gets right (it says stored and the register has it, or it says not
stored and the register has not). newman is installed on first use with
`npm install --prefix benchmarks/.node newman@6.2.2` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wem_der.send.quota import parse_rate

from benchmarks._harness import (
    PYTHON,
    REPO,
    WEM_DER,
    BenchError,
    SimProcess,
    read_jsonl,
    run_measured,
    simulator,
    table,
    tail,
    wem_der_outcomes,
    workdir,
    write_installations,
    write_result,
)

NODE_PREFIX = REPO / "benchmarks" / ".node"
NEWMAN_JS = NODE_PREFIX / "node_modules" / "newman" / "bin" / "newman.js"
NEWMAN_VERSION = "6.2.2"
PEERS = REPO / "benchmarks" / "peers"  # the peers' own scripts and files, run as a user would
COLLECTION = PEERS / "wem-der.postman_collection.json"
STORED = {"accepted", "conditional"}  # wem-der's outcome classes that mean "it is stored"

# nmi -> True (it says stored), False (it says not stored), None (it cannot tell)
Claims = dict[str, bool | None]


def _status_claims(out: Path) -> Claims:
    """Claims from a peer script's `{"nmi", "status"}` lines."""
    claims: Claims = {}
    for row in read_jsonl(out / "outcomes.jsonl"):
        status = row["status"]
        claims[row["nmi"]] = None if status is None else status in {200, 201}
    return claims


def _script(name: str, *extra: str) -> Callable[[SimProcess, Path, Path, str], list[str]]:
    def command(sim: SimProcess, source: Path, out: Path, quota: str) -> list[str]:
        return [
            PYTHON, str(PEERS / name), "--input", str(source), "--token-url", sim.token_url,
            "--installation-url", sim.installation_url, "--client-id", sim.client_id,
            "--secret-file", str(sim.secret_file), "--participant", sim.participant_id,
            "--quota", quota, "--out", str(out / "outcomes.jsonl"), *extra,
        ]  # fmt: skip

    return command


def _wem_der(sim: SimProcess, source: Path, out: Path, quota: str) -> list[str]:
    return [
        *WEM_DER, "submit", str(source), "--out", str(out / "outcomes"),
        "--state-dir", str(out / "state"), "--rate-limit", quota, *sim.wem_der_flags(),
    ]  # fmt: skip


def _wem_der_claims(out: Path) -> Claims:
    return {nmi: outcome in STORED for nmi, outcome in wem_der_outcomes(out / "outcomes").items()}


def _newman(sim: SimProcess, source: Path, out: Path, quota: str) -> list[str]:
    subprocess.run(
        [PYTHON, str(PEERS / "newman_data.py"), str(source), str(out / "data.json")],
        check=True, timeout=120, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        "name": "benchmark",
        "values": [
            {"key": key, "value": value, "enabled": True}
            for key, value in (
                ("token_url", sim.token_url),
                ("installation_url", sim.installation_url),
                ("client_id", sim.client_id),
                ("client_secret", sim.secret()),
                ("participant_id", sim.participant_id),
            )
        ],
    }
    env_file = out / "environment.json"
    env_file.write_text(json.dumps(env), encoding="utf-8")
    env_file.chmod(0o600)  # it holds the client secret
    node = shutil.which("node") or "node"
    return [
        node, str(NEWMAN_JS), "run", str(COLLECTION), "-e", str(env_file),
        "-d", str(out / "data.json"), "--reporters", "cli,json",
        "--reporter-json-export", str(out / "report.json"),
        "--timeout-request", "30000", "--color", "off", "--disable-unicode",
    ]  # fmt: skip


def _newman_claims(out: Path) -> Claims:
    rows = json.loads((out / "data.json").read_text(encoding="utf-8"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    claims: Claims = {row["nmi"]: None for row in rows}
    for execution in report["run"]["executions"]:
        nmi = rows[execution["cursor"]["iteration"]]["nmi"]
        response = execution.get("response")
        claims[nmi] = None if not response else response.get("code") in {200, 201}
    return claims


Command = Callable[[SimProcess, Path, Path, str], list[str]]
# name: (its command, the reader of its account, whether it exits non-zero when records fail)
APPROACHES: dict[str, tuple[Command, Callable[[Path], Claims], bool]] = {
    "(a) sequential": (_script("sequential.py"), _status_claims, False),
    "(b) newman": (_newman, _newman_claims, True),
    "(c) aiolimiter+gather": (_script("aiolimiter_gather.py"), _status_claims, False),
    "(c') same, retry 429": (
        _script("aiolimiter_gather.py", "--retries", "5"),
        _status_claims,
        False,
    ),
    "(d) wem-der": (_wem_der, _wem_der_claims, True),
}


def ensure_newman() -> bool:
    """Install newman into benchmarks/.node on first use; False if node or npm is missing."""
    if NEWMAN_JS.exists():
        return True
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return False
    print(f"installing newman@{NEWMAN_VERSION} into {NODE_PREFIX} ...", file=sys.stderr)
    subprocess.run(
        [npm, "install", "--prefix", str(NODE_PREFIX), f"newman@{NEWMAN_VERSION}"],
        check=True, timeout=600, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return NEWMAN_JS.exists()


def run_approach(name: str, sim: SimProcess, source: Path, quota: str, out: Path) -> dict[str, Any]:
    command_of, claims_of, may_fail = APPROACHES[name]
    out.mkdir(parents=True)
    sim.reset()
    command = command_of(sim, source, out, quota)
    stderr = out / "stderr.txt"
    run = run_measured(
        command, timeout_s=900, stdout=out / "stdout.txt", stderr=stderr, check=not may_fail,
        name=name,
    )  # fmt: skip
    stats = sim.stats()
    arrivals = sim.arrivals()
    stored = sim.stored_nmis()
    try:
        claims: Claims = claims_of(out)
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(
            f"{name}: exit code {run.returncode}, its output unreadable ({exc}):\n{tail(stderr)}"
        ) from exc
    says_stored = {nmi for nmi, claim in claims.items() if claim}
    says_not = {nmi for nmi, claim in claims.items() if claim is False}
    return {
        "approach": name,
        "exit_code": run.returncode,
        "wall_s": run.wall_s,
        "first_to_last_request_s": arrivals[-1] - arrivals[0] if arrivals else None,
        "requests": stats["der_requests_received"],
        "http_429": stats["http_429"],
        "fullest_window": stats["max_requests_in_window"],
        "outcome_known": len(says_stored) + len(says_not),
        "says_stored": len(says_stored),
        "stored": len(stored),
        "accounted_correctly": len(says_stored & stored) + len(says_not - stored),
        "cpu_s": run.cpu_s,
        "maxrss_mb": run.maxrss_mb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--quota", default="300/3s")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="least server delay")
    parser.add_argument("--jitter-ms", type=float, default=60.0, help="plus uniform 0..this")
    parser.add_argument(
        "--lost-answers",
        type=float,
        default=0.0,
        metavar="P",
        help="share of requests the register applies and then drops the connection of"
        " (the simulator's --applied-then-dropped-rate), to test each approach's account",
    )
    parser.add_argument("--name", default="peers", help="results file name")
    parser.add_argument("--skip-newman", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    count, period_s = parse_rate(args.quota)
    names = list(APPROACHES)
    notes = []
    if args.skip_newman or not ensure_newman():
        names.remove("(b) newman")
        notes.append("newman skipped" + ("" if args.skip_newman else ": node or npm not found"))
    runs = []
    with (
        workdir("peers", keep=args.keep) as directory,
        simulator(
            directory / "sim",
            quota=args.quota,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            extra_flags=("--applied-then-dropped-rate", str(args.lost_answers)),
        ) as sim,
    ):
        source = write_installations(directory / "records.jsonl", args.records)
        for index, name in enumerate(names):
            print(f"{name} ...", file=sys.stderr, flush=True)
            runs.append(
                run_approach(name, sim, source, args.quota, directory / f"approach-{index}")
            )
    # The least wall time the quota allows: the first window's allowance at once, the rest
    # at COUNT per PERIOD.
    floor_s = max(0, args.records - count) * period_s / count
    headers = [
        "approach", "wall s", "requests", "429s", "fullest window", "outcome known",
        "says stored", "stored", "accounted right",
    ]  # fmt: skip
    rows = [
        [
            r["approach"], f"{r['wall_s']:.1f}", r["requests"], r["http_429"],
            r["fullest_window"], r["outcome_known"], r["says_stored"], r["stored"],
            f"{r['accounted_correctly']}/{args.records}",
        ]
        for r in runs
    ]  # fmt: skip
    latency = f"{args.latency_ms + args.jitter_ms / 2:g} +- {args.jitter_ms / 2:g} ms"
    title = f"peers: {args.records} records, quota {args.quota}, server latency {latency}"
    if args.lost_answers:
        title += f", {args.lost_answers:.0%} of answers lost after the record is stored"
    print(table(headers, rows, title))
    print(f"\nthe quota allows it in no less than {floor_s:.1f} s plus one answer's latency")
    for note in notes:
        print(note)
    path = write_result(
        args.name,
        {
            "records": args.records,
            "lost_answers": args.lost_answers,
            "quota": args.quota,
            "latency": latency,
            "least_wall_s": floor_s,
            "newman": NEWMAN_VERSION if "(b) newman" in names else None,
            "runs": runs,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
