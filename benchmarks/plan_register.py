"""Reading the register in bulk: requests per record for `verify`, against a register that
already holds most of the source.

    python -m benchmarks.plan_register [--records 20000] [--quota 6000/60s] [--submit]

The register is the simulator in its own process (50 +- 30 ms a request, at the quota),
started on a SQLite file filled beforehand (`simulator.testing.prefill`) from the source:
90% of the records as the source has them, 5% changed (another jobNumber) and 5% absent,
spread evenly (of every twenty, the nineteenth is changed and the twentieth absent).

`verify` (register/verify.py) reads it in bulk in this process, 100 NMIs a search, with the
quota of a run, and classifies every record. Measured: requests per record, as the register
counted them, and wall time. Goal: at most 0.011 (the floor is one search per 100 records,
0.01). A plan from the register costs the same reads plus one write per changed or absent
record: the table shows that sum, 0.11 a record at 5% + 5%, beside what was measured.

With `--submit`, `wem-der submit` of the same source from an empty state directory is
measured too, once with `--plan register` (goal: at most 0.11 requests a record) and once
with `--plan none`, each on a register as it was filled (a copy of the SQLite file, served
by a simulator of its own). With no plan every unchanged record costs a refused create and
an update: at 6000/60s and 20,000 records about 40,000 requests, seven minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from wem_der.config import Settings
from wem_der.records.preflight import Preflight
from wem_der.records.samples import installations
from wem_der.records.shapes import RecordKind
from wem_der.register.search import RegisterReader
from wem_der.register.verify import verify
from wem_der.run.plan import numbered
from wem_der.send.answers import KnownRefusal
from wem_der.send.attempt import Attempts
from wem_der.send.auth import TokenProvider
from wem_der.send.client import ApiClient, TlsSettings, make_session
from wem_der.send.quota import QuotaLimiter, parse_rate
from wem_der.send.retry import RetryPolicy
from wem_der.send.routes import Routes
from wem_der.simulator import SimulatorSettings
from wem_der.simulator.sqlite_store import SqliteStore
from wem_der.simulator.state import SimState
from wem_der.simulator.testing import prefill

from benchmarks._harness import (
    WEM_DER,
    SimProcess,
    run_measured,
    simulator,
    table,
    wem_der_summary,
    workdir,
    write_installations,
    write_result,
)

GOAL_VERIFY = 0.011
GOAL_PLAN = 0.11


def held_by_register(count: int) -> Iterator[dict[str, Any]]:
    """What the register holds of the source: 18 of every 20 as they are, the 19th changed,
    the 20th not at all."""
    for i, record in enumerate(installations(count)):
        if i % 20 == 18:
            yield record | {"jobNumber": f"{record['jobNumber']}-OLD"}
        elif i % 20 != 19:
            yield record


def fill_register(db: Path, count: int) -> int:
    """Store what the register holds in the simulator's SQLite file; how many records."""

    async def fill() -> int:
        # In a running loop the store commits once for the whole burst, not per record.
        store = SqliteStore(db)
        try:
            state = SimState.build(
                SimulatorSettings(), clock=time.monotonic, sleep=asyncio.sleep, store=store
            )
            return prefill(state, held_by_register(count))
        finally:
            store.close()

    return asyncio.run(fill())


async def run_verify(sim: SimProcess, source: Path, out: Path, quota: str) -> dict[str, Any]:
    """`verify` of `source` against `sim`, wired as a run wires its sending."""
    count, period_s = parse_rate(quota)
    settings = Settings()
    async with make_session(tls=TlsSettings(), concurrency=8, timeout_s=60) as session:
        tokens = TokenProvider(
            session=session,
            token_url=sim.token_url,
            client_id=sim.client_id,
            client_secret=SecretStr(sim.secret()),
        )
        attempts = Attempts(
            client=ApiClient(session=session, tokens=tokens, participant_id=sim.participant_id),
            tokens=tokens,
            limiter=QuotaLimiter(count=count, period_s=period_s),
            policy=RetryPolicy(),
        )
        reader = RegisterReader(
            attempts=attempts,
            routes=Routes(sim.installation_url, sim.nmi_url),
            record_missing=KnownRefusal.record_missing(settings.record_missing_pattern),
        )
        started = time.monotonic()
        result = await verify(
            numbered([str(source)]),
            reader,
            out,
            preflight=Preflight(RecordKind.INSTALLATION),
            concurrency=8,
        )
        return {**result.summary, "wall_s": time.monotonic() - started}


def run_submit(
    plan: str, source: Path, records: int, db: Path, quota: str, directory: Path
) -> dict[str, Any]:
    """`wem-der submit --plan PLAN` of `source` from an empty state directory, against a
    simulator serving a copy of `db`: requests as the register counted them, and time."""
    case = directory / f"submit-{plan}"
    case.mkdir()
    copy = shutil.copyfile(db, case / "register.sqlite3")
    count, period_s = parse_rate(quota)
    with simulator(
        case / "sim", quota=quota, latency_ms=20, jitter_ms=60, extra_flags=["--db", str(copy)]
    ) as sim:
        before = sim.stats()["der_requests_received"]
        out = case / "out"
        command = [
            *WEM_DER, "submit", str(source), "--out", str(out), "--plan", plan,
            "--state-dir", str(case / "state"), "--rate-limit", quota, *sim.wem_der_flags(),
        ]  # fmt: skip
        run = run_measured(
            # Up to two requests a record with no plan, at the quota, thrice over.
            command, timeout_s=3 * records * 2 / count * period_s + 300,
            stdout=case / "submit.out", stderr=case / "submit.stderr",
            check=False, name=f"wem-der submit --plan {plan}",
        )  # fmt: skip
        seen = sim.stats()["der_requests_received"] - before
    summary = wem_der_summary(out)
    return {
        "requests_seen": seen,
        "requests_counted": summary.get("requests"),
        "requests_per_record": seen / summary["records"],
        "skipped": summary.get("skipped", 0),
        "sent": summary.get("accepted", 0) + summary.get("conditional", 0),
        "wall_s": run.wall_s,
        "returncode": run.returncode,
    }


def measure(records: int, quota: str, submit: bool, directory: Path) -> dict[str, Any]:
    source = write_installations(directory / "source.jsonl", records)
    db = directory / "register.sqlite3"
    started = time.monotonic()
    held = fill_register(db, records)
    print(f"register filled with {held} records in {time.monotonic() - started:.1f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    # verify reads a copy: each run below starts from the register as it was filled.
    flags = ["--db", str(shutil.copyfile(db, directory / "verify.sqlite3"))]
    with simulator(
        directory / "sim", quota=quota, latency_ms=20, jitter_ms=60, extra_flags=flags
    ) as sim:
        before = sim.stats()["der_requests_received"]
        found = asyncio.run(run_verify(sim, source, directory / "verify", quota))
        seen = sim.stats()
        reads = seen["der_requests_received"] - before
        writes = sum(
            sum(statuses.values())
            for endpoint, statuses in seen["requests"].items()
            if endpoint.endswith((".create", ".update"))
        )
        figures: dict[str, Any] = {
            "records": records,
            "held": held,
            "quota": quota,
            "verify": found,
            "verify_requests_seen": reads,
            "verify_writes_seen": writes,
            "verify_requests_per_record": reads / records,
            # A plan from the register: these reads, and one write per record to send.
            "plan_register_projected_per_record": (reads + found["differs"] + found["missing"])
            / records,
        }
    if submit:
        figures["submit"] = {
            plan: run_submit(plan, source, records, db, quota, directory)
            for plan in ("register", "none")
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plan_register", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--records", type=int, default=20_000, help="records in the source")
    parser.add_argument("--quota", default="6000/60s", help="the register's and the client's")
    parser.add_argument(
        "--submit", action="store_true", help="also time submit, --plan register and none"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    parse_rate(args.quota)  # fail on a typo before any work
    with workdir("plan-register", keep=args.keep) as directory:
        figures = measure(args.records, args.quota, args.submit, directory)
    found = figures["verify"]
    rows: list[list[object]] = [
        [
            "verify", figures["verify_requests_seen"],
            f"{figures['verify_requests_per_record']:.4f}", f"{found['wall_s']:.1f}",
            f"<= {GOAL_VERIFY}", "yes" if figures["verify_requests_per_record"] <= GOAL_VERIFY
            else "NO",
        ],
        [
            "plan register (reads + writes, projected)", None,
            f"{figures['plan_register_projected_per_record']:.4f}", None, f"<= {GOAL_PLAN}",
            "yes" if figures["plan_register_projected_per_record"] <= GOAL_PLAN else "NO",
        ],
    ]  # fmt: skip
    for plan, submitted in figures.get("submit", {}).items():
        per_record = submitted["requests_per_record"]
        goal = GOAL_PLAN if plan == "register" else None
        rows.append([
            f"submit --plan {plan} (empty state dir)", submitted["requests_seen"],
            f"{per_record:.4f}", f"{submitted['wall_s']:.1f}",
            None if goal is None else f"<= {goal}",
            None if goal is None else "yes" if per_record <= goal else "NO",
        ])  # fmt: skip
    title = (
        f"{figures['records']} records, register holding {figures['held']}"
        f" (5% changed, 5% absent), quota {figures['quota']}, 50 +- 30 ms"
    )
    headers = ["what", "requests", "per record", "wall s", "goal", "met"]
    print(table(headers, rows, title))
    print(
        "verify: " + ", ".join(f"{k} {found[k]}" for k in ("same", "differs", "missing", "error"))
    )
    path = write_result(
        "plan_register",
        {"goal": {"verify_per_record": GOAL_VERIFY, "plan_per_record": GOAL_PLAN}, **figures},
    )
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
