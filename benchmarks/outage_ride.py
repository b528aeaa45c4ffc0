"""A nightly run through the register's outage, in real time: nothing failed, the register
left alone while it is down, and the run finishing by itself.

    python -m benchmarks.outage_ride [--records 1500] [--quota 100/1s] [--outage-at 8]
        [--outage-s 120] [--kind 503|dropped|both]

The simulator runs in its own process, with an outage window from `--outage-at` seconds
after it starts, `--outage-s` long: every DER request answered 503 (`503`), or its
connection closed without an answer (`dropped`). One `wem-der submit` of `--records`
records at `--quota` starts at once, so that the outage falls in the middle of it.

From the simulator's arrival log and the run's summary.json:

    records        outcomes by class (goal: none failed, each record once)
    met / 1st s    requests that reached the register while it was down; those in the
                   first second the run met it (the failures that open the breaker, and
                   those already on their way)
    max/s after    the most requests in any later second of the outage (goal: <= 2)
    probes         the breaker's probes (summary.json `outages`)
    back after     from the register's return to the run's first success after it
                   (at most a probe's longest wait, about a minute)
    wall / floor   the run's wall time over the quota's time for its requests plus the
                   outage (goal: the run ends by itself, near 1)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from wem_der.send.quota import parse_rate

from benchmarks._harness import (
    WEM_DER,
    BenchError,
    simulator,
    table,
    wem_der_outcomes,
    wem_der_summary,
    workdir,
    write_installations,
    write_result,
)

MAX_PER_SECOND = 2


def measure(
    kind: str, records: int, quota: str, outage_at: float, outage_s: float, directory: Path
) -> dict[str, Any]:
    count, period_s = parse_rate(quota)
    window = f"{outage_at}:{outage_at + outage_s}"
    flag = "--outage" if kind == "503" else "--dropped-outage"
    source = write_installations(directory / "in.jsonl", records)
    out = directory / "out"
    log = directory / "wem-der.log"
    with simulator(directory / "sim", quota=quota, extra_flags=[flag, window]) as sim:
        sim_started = time.monotonic()  # the outage's clock starts with the simulator's
        command = [*WEM_DER, "submit", str(source), "--out", str(out), *sim.wem_der_flags()]
        command += ["--state-dir", str(directory / "state"), "--rate-limit", quota]
        deadline_s = records * period_s / count * 3 + outage_s + 180
        started = time.monotonic()
        with log.open("wb") as sink:
            done = subprocess.run(
                command, stdout=sink, stderr=sink, timeout=deadline_s, check=False
            )
        wall_s = time.monotonic() - started
        arrivals = sorted(sim.arrivals())
    if done.returncode != 0:
        raise BenchError(f"submit exited {done.returncode}; its log is {log}")
    down_from, down_to = sim_started + outage_at, sim_started + outage_at + outage_s
    met = [at for at in arrivals if down_from <= at < down_to]
    if not met:
        raise BenchError("the run never met the outage: start it later or make it longer")
    per_second = Counter(int(at - met[0]) for at in met)
    after = [at for at in arrivals if at >= down_to]
    summary = wem_der_summary(out)
    outcomes = Counter(wem_der_outcomes(out).values())
    return {
        "kind": kind,
        "quota": quota,
        "records": records,
        "outage_s": outage_s,
        "outcomes": dict(outcomes),
        "each_record_once": sum(outcomes.values()) == records,
        "failed": summary["failed"],
        "met": len(met),
        "first_second": per_second[0],
        # When each of them came, in ms after the first: together, or one after another.
        "first_second_ms": [round((at - met[0]) * 1000, 1) for at in met if at < met[0] + 1],
        "max_per_second_after": max((n for s, n in per_second.items() if s >= 1), default=0),
        "probes": sum(o["probes"] for o in summary["outages"]),
        "outages": summary["outages"],
        "back_after_s": (after[0] - down_to) if after else None,
        "wall_s": wall_s,
        "floor_s": summary["requests"] * period_s / count + outage_s,
        "requests": summary["requests"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--quota", default="100/1s")
    parser.add_argument("--outage-at", type=float, default=8.0)
    parser.add_argument("--outage-s", type=float, default=120.0)
    parser.add_argument("--kind", choices=["503", "dropped", "both"], default="both")
    args = parser.parse_args(argv)
    kinds = ["503", "dropped"] if args.kind == "both" else [args.kind]
    results = []
    for kind in kinds:
        with workdir(f"outage-{kind}") as directory:
            results.append(
                measure(kind, args.records, args.quota, args.outage_at, args.outage_s, directory)
            )
    rows = [
        [
            r["kind"],
            " ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())),
            r["failed"],
            f"{r['met']} / {r['first_second']}",
            r["max_per_second_after"],
            r["probes"],
            "-" if r["back_after_s"] is None else f"{r['back_after_s']:.1f} s",
            f"{r['wall_s']:.0f} / {r['floor_s']:.0f} s",
        ]
        for r in results
    ]
    headers = ["outage", "records", "failed", "met / 1st s", "max/s after", "probes"]
    headers += ["back after", "wall / floor"]
    print(table(headers, rows, title=f"{args.records} records at {args.quota}, outage"))
    ok = all(
        r["failed"] == 0 and r["each_record_once"] and r["max_per_second_after"] <= MAX_PER_SECOND
        for r in results
    )
    path = write_result("outage_ride", {"results": results, "goal_met": ok})
    print(f"goal {'met' if ok else 'MISSED'}; written to {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
