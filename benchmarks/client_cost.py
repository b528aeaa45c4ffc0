"""Client cost: CPU seconds per 1000 records, wem-der against a bare aiohttp floor.

    python -m benchmarks.client_cost [--records 10000] [--concurrency 100] [--rounds 3]

One simulator, in its own process with the quota lifted and no added latency, serves every
client, so only the client's CPU is counted. Each client runs in a fresh process of its
own (`benchmarks._cpu_child`):

- floor: a bare aiohttp loop posting the same records, encoded as wem-der encodes them
  (`{"data": record}`, orjson, gzip level 6) before the clock starts, at the same
  concurrency, reading every answer and recording nothing;
- wem-der: `wem-der submit FILE` at the same concurrency, from reading the file to the
  summary (pre-flight, ledger, outcome files and all), its imports done before the clock;
- the floor again with wem-der's garbage collector settings, which wem-der sets for a run
  (`pipeline.cli.tune_gc`): how much of the ratio those settings alone are worth.

"run CPU" is `time.process_time()` around the run inside the child (all threads, user +
system); "process CPU" is the whole process as the kernel accounts it (wait4), interpreter
start and imports included. The register is reset before each client run, and each round
starts with a different client, so drift on a noisy machine hits all three alike; the
ratio is of the medians. Goal: wem-der <= 1.5 x the floor (run CPU). When it is over, or
with --profile, wem-der runs once more under cProfile and its hot spots are listed.
"""

from __future__ import annotations

import argparse
import pstats
import re
import statistics
import sys
import time
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import orjson

from benchmarks._cpu_child import TOKEN_ENV
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

GOAL_RATIO = 1.5
# How cProfile names a C method: "<method 'send' of '_socket.socket' objects>".
_METHOD = re.compile(r"<method '([^']+)' of '([^']+)' objects>")
CHILD = (PYTHON, "-m", "benchmarks._cpu_child")
FLOOR, TUNED_FLOOR, WEM_DER = "floor", "floor-tuned-gc", "wem-der"
FLOORS = (FLOOR, TUNED_FLOOR)
ROLES = (FLOOR, WEM_DER, TUNED_FLOOR)


def _run(
    role: str, sim: SimProcess, source: Path, records: int, concurrency: int, directory: Path,
    tag: str, profile: Path | None = None, extra: Sequence[str] = (),
) -> dict[str, Any]:  # fmt: skip
    sim.reset()
    result = directory / f"{tag}.json"
    stderr = directory / f"{tag}.stderr"
    env: dict[str, str] = {}
    if role in FLOORS:
        command = [
            *CHILD, str(result), "floor", "--input", str(source),
            "--url", sim.installation_url + "/installation",
            "--participant", sim.participant_id, "--concurrency", str(concurrency),
            *(["--tuned-gc"] if role == TUNED_FLOOR else []),
        ]  # fmt: skip
        env[TOKEN_ENV] = sim.token()
    else:
        command = [*CHILD, str(result), "pipeline"]
        if profile is not None:
            command += ["--profile", str(profile)]
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


def by_area(profile: Path) -> list[tuple[str, float]]:
    """Own time summed by where the code lives: a pipeline module, or a library."""
    stats = pstats.Stats(str(profile))
    areas: dict[str, float] = {}
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, _) in entries.items():
        areas[_area(filename, function)] = areas.get(_area(filename, function), 0.0) + tottime
    return sorted(areas.items(), key=lambda item: -item[1])


def _area(filename: str, function: str) -> str:
    path = Path(filename)
    parts = path.parts
    if "pipeline" in parts and "site-packages" not in parts:
        return "pipeline/" + "/".join(parts[parts.index("pipeline") + 1 :])
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if filename == "~":  # a built-in: name it by its function
        method = _METHOD.fullmatch(function)
        if method:
            return f"built-in {method[2].rsplit('.', 1)[-1]}.{method[1]}"
        return "built-in " + function.removeprefix("<built-in method ").strip("<>")
    return "stdlib " + path.name


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


def stage_costs(source: Path) -> list[tuple[str, float]]:
    """CPU microseconds per record of what wem-der does before each request and the floor
    does not, each stage run alone over the same records in this process: how much of the
    gap to the floor is work the product exists to do."""
    from pipeline.codec import Compression, encode_body
    from pipeline.decode import items_from_chunks
    from pipeline.models import RecordKind
    from pipeline.outcomes import PreparedRecord
    from pipeline.preflight import Preflight
    from pipeline.routes import request_body
    from pipeline.sources import MAX_ITEM_BYTES

    kind = RecordKind.INSTALLATION
    data = source.read_bytes()
    started = time.process_time()
    items = list(items_from_chunks(source.name, iter([data]), MAX_ITEM_BYTES))
    for item in items:
        _ = item.value  # decoding is deferred until the value is read
    decoded = time.process_time()
    preflight = Preflight(kind)
    checked = [preflight.check(seq, item) for seq, item in enumerate(items)]
    prepared = time.process_time()
    for rec in checked:
        if isinstance(rec, PreparedRecord):
            encode_body(request_body(kind, rec.payload), Compression.GZIP)
    encoded = time.process_time()
    per = 1e6 / len(items)
    return [
        ("read and decode (orjson, duplicate-key check)", (decoded - started) * per),
        ("pre-flight (validate, content hash)", (prepared - decoded) * per),
        ("request body (orjson, gzip)", (encoded - prepared) * per),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.client_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=100, help="every client")
    parser.add_argument("--rounds", type=int, default=3, help="floor and wem-der runs each")
    parser.add_argument("--profile", action="store_true", help="profile wem-der regardless")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    profile_text = ""
    diagnosis: dict[str, Any] = {}
    with workdir("cost", keep=args.keep) as directory, simulator(directory / "sim") as sim:
        source = write_installations(directory / "records.jsonl", args.records)
        for round_no in range(args.rounds):
            # Each round starts with a different client, so drift hits all three alike.
            shift = round_no % len(ROLES)
            for role in ROLES[shift:] + ROLES[:shift]:
                print(f"round {round_no + 1}: {role} ...", file=sys.stderr, flush=True)
                tag = f"{role}-{round_no}"
                runs.append(_run(role, sim, source, args.records, args.concurrency, directory, tag))
        floor = [r for r in runs if r["role"] == FLOOR]
        tuned = [r for r in runs if r["role"] == TUNED_FLOOR]
        ours = [r for r in runs if r["role"] == WEM_DER]
        stages = stage_costs(source)

        def median(rows: list[dict[str, Any]], key: str) -> float:
            return float(statistics.median(r[key] for r in rows))

        ratio = median(ours, "run_cpu_per_1000") / median(floor, "run_cpu_per_1000")
        process_ratio = median(ours, "process_cpu_per_1000") / median(floor, "process_cpu_per_1000")
        tuned_ratio = median(ours, "run_cpu_per_1000") / median(tuned, "run_cpu_per_1000")
        if ratio > GOAL_RATIO or args.profile:
            print("profiling wem-der ...", file=sys.stderr, flush=True)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile = RESULTS_DIR / "client_cost.prof"
            _run(
                WEM_DER, sim, source, args.records, args.concurrency, directory, "profiled",
                profile=profile,
            )  # fmt: skip
            profile_text = hot_spots(profile)
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
        ("floor (bare aiohttp)", floor),
        ("wem-der", ours),
        ("floor, wem-der's GC settings", tuned),
    )
    for name, rows_of in clients:
        wall = median(rows_of, "run_wall_s")
        rows.append([
            name, len(rows_of), f"{median(rows_of, 'run_cpu_per_1000'):.3f}",
            f"{median(rows_of, 'process_cpu_per_1000'):.3f}", f"{wall:.2f}",
            f"{args.records / wall:.0f}", f"{median(rows_of, 'maxrss_mb'):.0f}",
        ])  # fmt: skip
    title = (
        f"client cost: {args.records} records, concurrency {args.concurrency}, quota lifted,"
        f" medians of {args.rounds} rounds"
    )
    print(table(headers, rows, title))
    verdict = "meets" if ratio <= GOAL_RATIO else "MISSES"
    print(
        f"\nwem-der / floor: {ratio:.2f}x run CPU ({verdict} the goal of <= {GOAL_RATIO}x),"
        f" {process_ratio:.2f}x process CPU; against the floor with wem-der's GC settings"
        f" {tuned_ratio:.2f}x run CPU"
    )
    threads = {
        name: statistics.median(r["threads_cpu_per_1000"].get(name, 0.0) for r in ours)
        for name in sorted({n for r in ours for n in r["threads_cpu_per_1000"]})
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
    diagnosis["stages_us_per_record"] = dict(stages)
    floor_us = median(floor, "run_cpu_per_1000") * 1000
    print(
        "\nper-record work the floor does not do (each stage alone, in this process), against"
        f" the floor's {floor_us:.0f} us per record:"
    )
    for name, cost in stages:
        print(f"  {cost:6.1f} us  {cost / floor_us:5.2f}x floor  {name}")
    total = sum(cost for _, cost in stages)
    print(f"  {total:6.1f} us  {total / floor_us:5.2f}x floor  before the ledger, log and files")
    if profile_text:
        print("\nwem-der hot spots (cProfile on the main thread's CPU clock):\n" + profile_text)
    path = write_result(
        "client_cost",
        {
            "records": args.records,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "goal": {"ratio_max": GOAL_RATIO},
            "ratio_run_cpu": ratio,
            "ratio_process_cpu": process_ratio,
            "ratio_run_cpu_floor_tuned_gc": tuned_ratio,
            "runs": runs,
            "diagnosis": diagnosis,
            "profile": profile_text or None,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
