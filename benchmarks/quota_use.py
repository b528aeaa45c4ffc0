"""Quota use: how much of the quota wem-der turns into requests, with none refused.

    python -m benchmarks.quota_use [--quota 600/6s] [--quota 6000/60s] [--periods 5]

The simulator runs in its own process, enforcing COUNT/PERIOD exactly (a sliding window,
as AEMO's gateway is assumed to) and answering each request after 50 +- 30 ms. wem-der
submits COUNT x PERIODS + 1 records to it with `--rate-limit COUNT/PERIOD`, so work is
always waiting. The simulator logs the arrival time of every request; from that log:

    t[i]   the arrival of the i-th request (0-based), C = COUNT, P = PERIOD, N requests
    k      = (N - 1) // C, the last whole number of quotas after the first request

    steady-state use = requests in [t[C], t[kC]) / (C / P x (t[kC] - t[C]))
                     = (k - 1) P / (t[kC] - t[C])

Why these end points: a fresh client may send its first C requests at once (the first
window's allowance, a burst); t[C] is the first request that had to wait for the window
to move, where the steady state begins. The quota holds exactly when t[i + C] - t[i] >= P
for every i (otherwise C + 1 requests share one window), and a client using all of it has
t[i + C] - t[i] = P. Measuring between arrivals a whole number of quotas apart gives the
mean of that spacing without a fence-post error, however bursty the client: 1.0 means the
whole quota is used, 0.98 that 2 % of it is left unused.

Also reported: 429s and the fullest window (the simulator's exact sliding maximum), and
`closest` = min over all i of t[i + C] - t[i] - P, how near the tightest moment came to a
refusal (negative would mean a window over the quota; wem-der's limiter keeps its window
`quota_margin_s`, 100 ms, longer than PERIOD to absorb delay between grant and arrival).
Goal: use >= 0.98, no 429s, the fullest window <= COUNT.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from wem_der.send.quota import parse_rate

from benchmarks._harness import (
    WEM_DER,
    BenchError,
    fullest_window,
    run_measured,
    simulator,
    table,
    wem_der_summary,
    workdir,
    write_installations,
    write_result,
)

GOAL_USE = 0.98


def quota_use(arrivals: list[float], count: int, period_s: float) -> dict[str, Any]:
    """The figures of the module docstring, from a sorted arrival log."""
    n = len(arrivals)
    k = (n - 1) // count
    if k < 2:
        raise BenchError(
            f"{n} arrivals: steady state needs at least 2 x {count} + 1 (raise --periods)"
        )
    t = arrivals
    span = t[k * count] - t[count]
    spacing = [t[i + count] - t[i] for i in range(n - count)]
    first_window = sum(1 for x in t if x < t[0] + period_s)
    return {
        "requests": n,
        "steady_state_use": (k - 1) * period_s / span,
        "steady_quotas": k - 1,
        "steady_span_s": span,
        "first_window_requests": first_window,
        "closest_ms": (min(spacing) - period_s) * 1000,
        "median_spacing_s": statistics.median(spacing),
        "first_to_last_s": t[-1] - t[0],
        "fullest_window_from_log": fullest_window(t, period_s),
    }


def measure(
    quota: str, periods: int, latency_ms: float, jitter_ms: float, concurrency: int | None,
    directory: Path,
) -> dict[str, Any]:  # fmt: skip
    count, period_s = parse_rate(quota)
    records = count * periods + 1
    source = write_installations(directory / "records.jsonl", records)
    with simulator(
        directory / "sim", quota=quota, latency_ms=latency_ms, jitter_ms=jitter_ms
    ) as sim:
        out = directory / "out"
        command = [
            *WEM_DER, "submit", str(source), "--out", str(out),
            "--state-dir", str(directory / "state"), "--rate-limit", quota,
            *sim.wem_der_flags(),
        ]  # fmt: skip
        if concurrency:
            command += ["--concurrency", str(concurrency)]
        stderr = directory / "wem-der.stderr"
        run = run_measured(
            command, timeout_s=periods * period_s * 3 + 120, stdout=directory / "wem-der.out",
            stderr=stderr,
        )  # fmt: skip
        stats = sim.stats()
        arrivals = sim.arrivals()
    summary = wem_der_summary(out)
    figures = quota_use(arrivals, count, period_s)
    return {
        "quota": quota,
        "periods": periods,
        "records": records,
        "latency_ms": f"{latency_ms + jitter_ms / 2:g} +- {jitter_ms / 2:g}",
        "concurrency": summary.get("concurrency"),
        "wall_s": run.wall_s,
        "http_429": stats["http_429"],
        "fullest_window": stats["max_requests_in_window"],
        "accepted": summary.get("accepted", 0) + summary.get("conditional", 0),
        "client_fullest_window": summary.get("max_requests_in_window"),
        **figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quota_use", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quota", action="append", metavar="COUNT/PERIOD",
        help="quota to enforce and submit at (repeatable; default 600/6s)",
    )  # fmt: skip
    parser.add_argument("--periods", type=int, default=5, help="run length in periods")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="least server delay")
    parser.add_argument("--jitter-ms", type=float, default=60.0, help="plus uniform 0..this")
    parser.add_argument("--concurrency", type=int, help="wem-der workers (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--name", default="quota_use", help="results file name")
    args = parser.parse_args(argv)
    quotas = args.quota or ["600/6s"]
    runs = []
    for quota in quotas:
        parse_rate(quota)  # fail on a typo before any work
        with workdir("quota", keep=args.keep) as directory:
            print(f"quota {quota}: {args.periods} periods ...", file=sys.stderr, flush=True)
            run = measure(
                quota, args.periods, args.latency_ms, args.jitter_ms, args.concurrency, directory
            )
            runs.append(run)
    rows = [
        [
            r["quota"], r["records"], f"{r['wall_s']:.1f}", r["requests"], r["http_429"],
            r["fullest_window"], r["first_window_requests"], f"{r['steady_state_use']:.4f}",
            round(r["closest_ms"], 1), "yes" if _meets(r) else "NO",
        ]
        for r in runs
    ]  # fmt: skip
    headers = [
        "quota", "records", "wall s", "requests", "429s", "fullest window",
        "1st window", "steady use", "closest ms", "goal",
    ]  # fmt: skip
    print(table(headers, rows, f"quota use (server latency {runs[0]['latency_ms']} ms)"))
    path = write_result(args.name, {"goal": {"steady_state_use_min": GOAL_USE}, "runs": runs})
    print(f"\nwritten {path}")
    return 0


def _meets(run: dict[str, Any]) -> bool:
    count, _ = parse_rate(run["quota"])
    return bool(
        run["steady_state_use"] >= GOAL_USE
        and run["http_429"] == 0
        and run["fullest_window"] <= count
    )


if __name__ == "__main__":
    sys.exit(main())
