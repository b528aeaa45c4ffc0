"""Client cost: CPU seconds per 1000 records, wem-der against two floors.

    python -m benchmarks.client_cost [--records 10000] [--concurrency 100] [--rounds 3]

One simulator, in its own process with the quota lifted and no added latency, serves every
client, so only the client's CPU is counted. Each client runs in a fresh process of its
own (`benchmarks._cpu_child`):

- floor: a bare aiohttp loop posting the same records, encoded as wem-der encodes them
  (`{"data": record}`, orjson, gzip level 6) before the clock starts, at the same
  concurrency, reading every answer and recording nothing;
- do-it-yourself floor: the least an honest client does, all inside the clock: reads the
  same file line by line, decodes each line, encodes and gzips the body, posts it with an
  explicit Content-Length at the same concurrency, parses each answer and appends one
  outcome line to a plain file (no ledger, no validation, no retries, no log);
- wem-der: `wem-der submit FILE` at the same concurrency, from reading the file to the
  summary (pre-flight, ledger, outcome files and all), its imports done before the clock;
- the floor again with wem-der's garbage collector settings, which wem-der sets for a run
  (`wem_der.cli.main.tune_gc`): how much of the ratio those settings alone are worth.

"run CPU" is `time.process_time()` around the run inside the child (all threads, user +
system); "process CPU" is the whole process as the kernel accounts it (wait4), interpreter
start and imports included. The register is reset before each client run, and each round
starts with a different client, so drift on a noisy machine hits all four alike; the
ratios are of the medians. Goal: wem-der <= 1.3 x the do-it-yourself floor (run CPU); the
ratio to the bare floor is reported beside it. Also printed: the share of one core that
wem-der's run CPU per record comes to at AEMO's quota (6000/60s, 100 records a second).
Where wem-der's CPU above the do-it-yourself floor goes: each stage both do (and
pre-flight, which only wem-der does) timed alone over the same records in this process,
and, when the goal is missed or with --profile, wem-der and that floor each run once more
under cProfile, their own time compared area by area.
"""

from __future__ import annotations

import argparse
import gzip
import pstats
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import orjson

from benchmarks._cpu_child import GZIP_LEVEL, TOKEN_ENV
from benchmarks._harness import (
    PYTHON,
    RESULTS_DIR,
    BenchError,
    SimProcess,
    run_measured,
    simulator,
    table,
    workdir,
    write_installations,
    write_result,
)

# Against the do-it-yourself floor: what wem-der may spend on top of the work any client
# must do, for the ledger, pre-flight, retries and reporting.
GOAL_RATIO = 1.3
# AEMO's quota, 6000 requests a minute: the most records a second a run can send.
AEMO_RECORDS_PER_S = 100.0
# How cProfile names a C method: "<method 'send' of '_socket.socket' objects>".
_METHOD = re.compile(r"<method '([^']+)' of '([^']+)' objects>")
CHILD = (PYTHON, "-m", "benchmarks._cpu_child")
FLOOR, TUNED_FLOOR, DIY, WEM_DER = "floor", "floor-tuned-gc", "diy", "wem-der"
FLOORS = (FLOOR, TUNED_FLOOR)
ROLES = (FLOOR, DIY, WEM_DER, TUNED_FLOOR)


def _run(
    role: str, sim: SimProcess, source: Path, records: int, concurrency: int, directory: Path,
    tag: str, profile: Path | None = None, extra: Sequence[str] = (),
) -> dict[str, Any]:  # fmt: skip
    sim.reset()
    result = directory / f"{tag}.json"
    stderr = directory / f"{tag}.stderr"
    env: dict[str, str] = {}
    outcomes = directory / f"{tag}-outcomes.jsonl"
    profiling = [] if profile is None else ["--profile", str(profile)]
    if role in (*FLOORS, DIY):
        command = [
            *CHILD, str(result), "floor" if role in FLOORS else "diy", "--input", str(source),
            "--url", sim.installation_url + "/installation",
            "--participant", sim.participant_id, "--concurrency", str(concurrency),
            *(["--tuned-gc"] if role == TUNED_FLOOR else []),
            *(["--outcomes", str(outcomes), *profiling] if role == DIY else []),
        ]  # fmt: skip
        env[TOKEN_ENV] = sim.token()
    else:
        command = [*CHILD, str(result), "pipeline", *profiling]
        command += [
            "--", "submit", str(source), "--out", str(directory / f"{tag}-out"),
            "--state-dir", str(directory / f"{tag}-state"), "--rate-limit", "1000000/1s",
            "--concurrency", str(concurrency), *sim.wem_der_flags(), *extra,
        ]  # fmt: skip
    process = run_measured(
        command, timeout_s=600, stdout=directory / f"{tag}.out", stderr=stderr, env=env
    )
    inner = orjson.loads(result.read_bytes())
    stats = sim.stats()
    if stats["installations"] != records or stats["der_requests_received"] != records:
        raise BenchError(
            f"{role} ({tag}): the register holds {stats['installations']} of {records} records"
            f" after {stats['der_requests_received']} requests; the comparison would be unfair"
        )
    if role == DIY and (written := outcomes.read_bytes().count(b"\n")) != records:
        raise BenchError(f"diy ({tag}): {written} outcome lines for {records} records")
    return {
        "role": role,
        "tag": tag,
        "run_cpu_s": inner["cpu_s"],
        "run_wall_s": inner["wall_s"],
        "process_cpu_s": process.cpu_s,
        "process_wall_s": process.wall_s,
        "maxrss_mb": process.maxrss_mb,
        "run_cpu_per_1000": inner["cpu_s"] / records * 1000,
        "process_cpu_per_1000": process.cpu_s / records * 1000,
        # wem-der only: CPU by thread ("main", "wem-der-ledger" for checkpoints, "asyncio" for
        # the reader).
        "threads_cpu_per_1000": {
            name: cpu / records * 1000 for name, cpu in inner.get("threads_cpu_s", {}).items()
        },
    }


def by_area(profile: Path, *, builtins_to_callers: bool = False) -> list[tuple[str, float]]:
    """Own time summed by where the code lives: a pipeline module, or a library.

    With `builtins_to_callers`, the time of a built-in (`isinstance`, `dict.get`) goes to
    the areas of the functions that called it, as much to each as it spent there: which
    module's work it was, rather than one line for all of them.
    """
    stats = pstats.Stats(str(profile))
    areas: dict[str, float] = {}
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, callers) in entries.items():
        shares: dict[str, float] = {}
        if builtins_to_callers and filename == "~":
            for (caller_file, _, caller), (_, _, spent, _) in callers.items():
                area = _area(caller_file, caller)
                shares[area] = shares.get(area, 0.0) + spent
        whole = sum(shares.values())
        if whole <= 0:
            shares, whole = {_area(filename, function): 1.0}, 1.0
        for area, spent in shares.items():
            areas[area] = areas.get(area, 0.0) + tottime * spent / whole
    return sorted(areas.items(), key=lambda item: -item[1])


def _area(filename: str, function: str) -> str:
    path = Path(filename)
    parts = path.parts
    if "pipeline" in parts and "site-packages" not in parts:
        return "pipeline/" + "/".join(parts[parts.index("pipeline") + 1 :])
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if path.parent.name == "benchmarks":  # the do-it-yourself floor's own loop
        return "benchmarks/" + path.name
    if filename == "~":  # a built-in: name it by its function
        method = _METHOD.fullmatch(function)
        if method:
            return f"built-in {method[2].rsplit('.', 1)[-1]}.{method[1]}"
        return "built-in " + function.removeprefix("<built-in method ").strip("<>")
    return "stdlib " + path.name


def area_gap(ours: Path, diy: Path, records: int, limit: int = 20) -> list[list[object]]:
    """Own time by area under the profiler (built-ins counted in their callers' areas),
    wem-der's beside the do-it-yourself floor's, in microseconds per record: the `limit`
    areas that differ most, wem-der's largest extra first. The floor's own loop is an area
    of its own, so the work both do shows as wem-der's modules above and that loop below."""
    mine = dict(by_area(ours, builtins_to_callers=True))
    theirs = dict(by_area(diy, builtins_to_callers=True))
    per = 1e6 / records
    rows = [
        (area, mine.get(area, 0.0) * per, theirs.get(area, 0.0) * per)
        for area in mine.keys() | theirs.keys()
    ]
    rows.sort(key=lambda row: -abs(row[1] - row[2]))
    rows = sorted(rows[:limit], key=lambda row: row[2] - row[1])
    total = ("all areas", sum(mine.values()) * per, sum(theirs.values()) * per)
    return [[area, us, diy_us, us - diy_us] for area, us, diy_us in [*rows, total]]


def hot_spots(profile: Path, limit: int = 25) -> str:
    """Own time by area, then the functions with the most own and cumulative time."""
    areas = by_area(profile)
    total = sum(t for _, t in areas) or 1.0
    lines = [f"{t:8.3f} s {t / total:6.1%}  {name}" for name, t in areas[:limit]]
    out = StringIO()
    out.write("own CPU time by area (main thread):\n" + "\n".join(lines) + "\n\n")
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def stage_costs(source: Path, scratch: Path) -> list[tuple[str, float, float]]:
    """CPU microseconds per record of each stage of the per-record work, as wem-der does it
    and as the do-it-yourself floor does it, each run alone over the same records in this
    process: (stage, wem-der, diy). What the two do not share (the ledger, the engine's
    bookkeeping, logging) is not here; it is the rest of the gap."""
    from wem_der.ledger.outcome_files import OutcomeSink
    from wem_der.read.formats import items_from_chunks
    from wem_der.read.sources import MAX_ITEM_BYTES
    from wem_der.records.outcomes import Action, Outcome, OutcomeRecord, PreparedRecord
    from wem_der.records.preflight import Preflight
    from wem_der.records.shapes import RecordKind
    from wem_der.send.body import Compression, encode_body, parse_answer
    from wem_der.send.routes import request_body

    kind = RecordKind.INSTALLATION
    data = source.read_bytes()
    lines = data.splitlines()
    clock = time.process_time
    costs: list[tuple[str, float, float]] = []
    per = 1e6 / len(lines)

    def timed(stage: Callable[[], object]) -> tuple[float, Any]:
        started = clock()
        result = stage()
        return (clock() - started) * per, result

    def decode_ours() -> list[Any]:
        items = list(items_from_chunks(source.name, iter([data]), MAX_ITEM_BYTES))
        for item in items:
            _ = item.value  # decoding is deferred until the value is read
        return items

    ours, items = timed(decode_ours)
    diy, records = timed(lambda: [orjson.loads(line) for line in lines if line.strip()])
    costs.append(("read and decode (wem-der: duplicate-key check)", ours, diy))
    preflight = Preflight(kind)
    ours, checked = timed(lambda: [preflight.check(seq, item) for seq, item in enumerate(items)])
    prepared = [rec for rec in checked if isinstance(rec, PreparedRecord)]
    if len(prepared) != len(records):
        raise BenchError(f"pre-flight passed {len(prepared)} of {len(records)} records")
    costs.append(("pre-flight (validate, content hash)", ours, 0.0))
    ours, _ = timed(
        lambda: [encode_body(request_body(kind, r.payload), Compression.GZIP) for r in prepared]
    )
    diy, _ = timed(
        lambda: [
            gzip.compress(orjson.dumps({"data": r}), compresslevel=GZIP_LEVEL, mtime=0)
            for r in records
        ]
    )
    costs.append(("request body (orjson, gzip)", ours, diy))
    # The simulator's answer to a create: a transaction id, the record as stored, no
    # exceptions; and the headers aiohttp's server sends with it.
    answers = [
        orjson.dumps({"transactionId": f"txn-{i:08d}", "data": r, "exceptions": []})
        for i, r in enumerate(records)
    ]
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Content-Length": "1500",
        "Date": "Sat, 28 Nov 2026 00:00:00 GMT",
        "Server": "Python/3.11 aiohttp/3.14",
    }
    ours, parsed = timed(lambda: [parse_answer(201, body, headers) for body in answers])
    diy, _ = timed(lambda: [orjson.loads(body).get("transactionId") for body in answers])
    costs.append(("answer parsed", ours, diy))
    outcomes = [
        OutcomeRecord(
            kind=kind, nmi=rec.nmi, source=rec.source, outcome=Outcome.ACCEPTED,
            action=Action.CREATE, http_status=201, transaction_id=answer.transaction_id,
            attempts=1, latency_ms=12.3, content_hash=rec.content_hash, run_id="run",
        )
        for rec, answer in zip(prepared, parsed, strict=True)
    ]  # fmt: skip

    def write_ours() -> None:
        with OutcomeSink(scratch / "stage-out") as sink:
            for outcome in outcomes:
                sink.write(outcome)

    def write_diy() -> None:
        with (scratch / "stage-diy.jsonl").open("ab") as out:
            for number, (record, answer) in enumerate(zip(records, parsed, strict=True), 1):
                line = {
                    "line": number, "nmi": record.get("nmi"), "status": 201,
                    "transactionId": answer.transaction_id,
                }  # fmt: skip
                out.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    ours, _ = timed(write_ours)
    diy, _ = timed(write_diy)
    costs.append(("outcome line (wem-der: one os.write each)", ours, diy))
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.client_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=100, help="every client")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each client")
    parser.add_argument("--profile", action="store_true", help="profile wem-der regardless")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    profile_text = ""
    areas: list[list[object]] = []
    diagnosis: dict[str, Any] = {}
    with workdir("cost", keep=args.keep) as directory, simulator(directory / "sim") as sim:
        source = write_installations(directory / "records.jsonl", args.records)
        for round_no in range(args.rounds):
            # Each round starts with a different client, so drift hits all of them alike.
            shift = round_no % len(ROLES)
            for role in ROLES[shift:] + ROLES[:shift]:
                print(f"round {round_no + 1}: {role} ...", file=sys.stderr, flush=True)
                tag = f"{role}-{round_no}"
                runs.append(_run(role, sim, source, args.records, args.concurrency, directory, tag))
        by_role = {role: [r for r in runs if r["role"] == role] for role in ROLES}
        stages = stage_costs(source, directory)

        def median(role: str, key: str) -> float:
            return float(statistics.median(r[key] for r in by_role[role]))

        def ratio(role: str, key: str = "run_cpu_per_1000") -> float:
            return median(WEM_DER, key) / median(role, key)

        # Each round's own ratio: load that drifts between rounds moves both of a round's
        # runs more alike than runs of different rounds.
        paired = [
            ours["run_cpu_s"] / diy["run_cpu_s"]
            for ours, diy in zip(by_role[WEM_DER], by_role[DIY], strict=True)
        ]

        if ratio(DIY) > GOAL_RATIO or args.profile:
            print("profiling wem-der ...", file=sys.stderr, flush=True)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile = RESULTS_DIR / "client_cost.prof"
            _run(
                WEM_DER, sim, source, args.records, args.concurrency, directory, "profiled",
                profile=profile,
            )  # fmt: skip
            profile_text = hot_spots(profile)
            print("profiling the do-it-yourself floor ...", file=sys.stderr, flush=True)
            diy_profile = RESULTS_DIR / "client_cost_diy.prof"
            _run(
                DIY, sim, source, args.records, args.concurrency, directory, "diy-profiled",
                profile=diy_profile,
            )  # fmt: skip
            areas = area_gap(profile, diy_profile, args.records)
            print("wem-der without compression ...", file=sys.stderr, flush=True)
            plain = _run(
                WEM_DER, sim, source, args.records, args.concurrency, directory, "plain",
                extra=("--compression", "none"),
            )  # fmt: skip
            diagnosis["no_compression_run_cpu_per_1000"] = plain["run_cpu_per_1000"]

    headers = [
        "client", "runs", "run CPU s/1000", "process CPU s/1000", "run wall s", "records/s",
        "peak RSS MB",
    ]  # fmt: skip
    rows = []
    clients = (
        ("floor (bare aiohttp)", FLOOR),
        ("do-it-yourself floor", DIY),
        ("wem-der", WEM_DER),
        ("floor, wem-der's GC settings", TUNED_FLOOR),
    )
    for name, role in clients:
        wall = median(role, "run_wall_s")
        rows.append([
            name, len(by_role[role]), f"{median(role, 'run_cpu_per_1000'):.3f}",
            f"{median(role, 'process_cpu_per_1000'):.3f}", f"{wall:.2f}",
            f"{args.records / wall:.0f}", f"{median(role, 'maxrss_mb'):.0f}",
        ])  # fmt: skip
    title = (
        f"client cost: {args.records} records, concurrency {args.concurrency}, quota lifted,"
        f" medians of {args.rounds} rounds"
    )
    print(table(headers, rows, title))
    verdict = "meets" if ratio(DIY) <= GOAL_RATIO else "MISSES"
    print(
        f"\nwem-der / do-it-yourself floor: {ratio(DIY):.2f}x run CPU ({verdict} the goal of"
        f" <= {GOAL_RATIO}x), {ratio(DIY, 'process_cpu_per_1000'):.2f}x process CPU;"
        f" round by round {', '.join(f'{r:.2f}' for r in paired)}x run CPU"
        f"\nwem-der / bare floor: {ratio(FLOOR):.2f}x run CPU,"
        f" {ratio(FLOOR, 'process_cpu_per_1000'):.2f}x process CPU; against the bare floor"
        f" with wem-der's GC settings {ratio(TUNED_FLOOR):.2f}x run CPU"
    )
    # Run CPU per record (ms) x records a second / 1000 ms = the share of one core.
    core_share = {
        role: median(role, "run_cpu_per_1000") * AEMO_RECORDS_PER_S / 1000 for role in ROLES
    }
    print(
        f"at AEMO's quota ({AEMO_RECORDS_PER_S:.0f} records/s), run CPU as a share of one core:"
        f" wem-der {core_share[WEM_DER]:.1%}, do-it-yourself {core_share[DIY]:.1%},"
        f" bare floor {core_share[FLOOR]:.1%}"
    )
    threads = {
        name: statistics.median(r["threads_cpu_per_1000"].get(name, 0.0) for r in by_role[WEM_DER])
        for name in sorted({n for r in by_role[WEM_DER] for n in r["threads_cpu_per_1000"]})
    }
    threads = {name: cpu for name, cpu in threads.items() if cpu >= 0.0005}
    diagnosis["threads_run_cpu_per_1000"] = threads
    print(
        "wem-der run CPU by thread, s/1000: "
        + ", ".join(
            f"{name} {cpu:.3f}" for name, cpu in sorted(threads.items(), key=lambda i: -i[1])
        )
    )
    if "no_compression_run_cpu_per_1000" in diagnosis:
        print(
            "wem-der --compression none: "
            f"{diagnosis['no_compression_run_cpu_per_1000']:.3f} run CPU s/1000 (one run)"
        )
    gap_us = (median(WEM_DER, "run_cpu_per_1000") - median(DIY, "run_cpu_per_1000")) * 1000
    extra_us = sum(ours - diy for _, ours, diy in stages)
    diagnosis["stages_us_per_record"] = {
        name: {"wem_der": ours, "diy": diy} for name, ours, diy in stages
    }
    diagnosis["gap_to_diy_us_per_record"] = gap_us
    diagnosis["gap_outside_stages_us_per_record"] = gap_us - extra_us
    print(
        f"\nwhere wem-der's {gap_us:.0f} us per record above the do-it-yourself floor goes"
        " (each stage alone over the same records, in this process; us per record):"
    )
    stage_rows = [[name, ours, diy, ours - diy] for name, ours, diy in stages]
    stage_rows.append(["the stages above together", None, None, extra_us])
    stage_rows.append(["the rest: ledger, engine bookkeeping, logs", None, None, gap_us - extra_us])
    print(table(["stage", "wem-der", "diy", "extra"], stage_rows))
    if areas:
        diagnosis["profiled_areas_us_per_record"] = {
            str(row[0]): {"wem_der": row[1], "diy": row[2]} for row in areas
        }
        print(
            "\nthe same gap by area: own time under cProfile (main thread's CPU clock), us per"
            " record; the profiler inflates call-heavy Python, so read it for ranking:"
        )
        print(table(["area", "wem-der", "diy", "extra"], areas))
    if profile_text:
        print("\nwem-der hot spots (cProfile on the main thread's CPU clock):\n" + profile_text)
    path = write_result(
        "client_cost",
        {
            "records": args.records,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "goal": {"ratio_to_diy_max": GOAL_RATIO},
            "ratio_run_cpu_diy": ratio(DIY),
            "ratio_run_cpu_diy_by_round": paired,
            "ratio_process_cpu_diy": ratio(DIY, "process_cpu_per_1000"),
            "ratio_run_cpu": ratio(FLOOR),
            "ratio_process_cpu": ratio(FLOOR, "process_cpu_per_1000"),
            "ratio_run_cpu_floor_tuned_gc": ratio(TUNED_FLOOR),
            "core_share_at_aemo_quota": core_share,
            "runs": runs,
            "diagnosis": diagnosis,
            "profile": profile_text or None,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
