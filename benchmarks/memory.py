"""Memory: wem-der's peak resident set for inputs ten times apart.

    python -m benchmarks.memory [--sizes 1000 20000 200000]

Each size runs `wem-der submit FILE` in a fresh process, with a fresh state directory,
against one simulator in a separate process with the quota lifted (the register is reset
between sizes), so the figure is wem-der's alone. Peak RSS is the kernel's ru_maxrss for
that process (wait4), interpreter and imports included. The records are generated
(`wem_der.records.samples`, about 1.2 kB of JSON each) into a file first.

Goal: under 150 MB at every size, and the largest two sizes within 10 % of each other:
memory must not grow with the input (bounded queues, streamed input, outcomes written as
they come).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    LIFTED_QUOTA,
    WEM_DER,
    BenchError,
    SimProcess,
    run_measured,
    simulator,
    table,
    wem_der_summary,
    workdir,
    write_installations,
    write_result,
)

GOAL_MB = 150.0
GOAL_GROWTH = 0.10


def _run(sim: SimProcess, size: int, directory: Path) -> dict[str, Any]:
    sim.reset()
    source = write_installations(directory / f"records-{size}.jsonl", size)
    out = directory / f"out-{size}"
    stderr = directory / f"wem-der-{size}.stderr"
    command = [
        *WEM_DER, "submit", str(source), "--out", str(out),
        "--state-dir", str(directory / f"state-{size}"), "--rate-limit", LIFTED_QUOTA,
        *sim.wem_der_flags(),
    ]  # fmt: skip
    run = run_measured(
        command, timeout_s=120 + size / 50, stdout=directory / f"wem-der-{size}.out",
        stderr=stderr,
    )  # fmt: skip
    stored = sim.stats()["installations"]
    summary = wem_der_summary(out)
    source.unlink()  # 250 MB at 200k: do not keep it while the next size runs
    if stored != size:
        raise BenchError(f"{size} records: the register holds {stored}")
    return {
        "records": size,
        "input_mb": size * 1.23 / 1024,
        "maxrss_mb": run.maxrss_mb,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "records_per_s": size / run.wall_s,
        "concurrency": summary.get("concurrency"),
        "accepted": summary.get("accepted", 0) + summary.get("conditional", 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000, 200000])
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    runs = []
    with workdir("memory", keep=args.keep) as directory, simulator(directory / "sim") as sim:
        for size in args.sizes:
            print(f"{size} records ...", file=sys.stderr, flush=True)
            runs.append(_run(sim, size, directory))
    rows = [
        [
            r["records"], f"{r['maxrss_mb']:.1f}", f"{r['wall_s']:.1f}",
            f"{r['records_per_s']:.0f}", f"{r['cpu_s']:.1f}",
        ]
        for r in runs
    ]  # fmt: skip
    print(table(["records", "peak RSS MB", "wall s", "records/s", "CPU s"], rows, "memory"))
    big, bigger = sorted(runs, key=lambda r: r["records"])[-2:]
    growth = bigger["maxrss_mb"] / big["maxrss_mb"] - 1
    peak = max(r["maxrss_mb"] for r in runs)
    meets = peak < GOAL_MB and abs(growth) <= GOAL_GROWTH
    print(
        f"\n{bigger['records']} vs {big['records']} records: {growth:+.1%} peak RSS;"
        f" highest {peak:.1f} MB ({'meets' if meets else 'MISSES'} the goal:"
        f" < {GOAL_MB:.0f} MB and within {GOAL_GROWTH:.0%})"
    )
    path = write_result(
        "memory",
        {
            "goal": {"max_mb": GOAL_MB, "max_growth": GOAL_GROWTH},
            "growth": growth,
            "meets_goal": meets,
            "runs": runs,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
