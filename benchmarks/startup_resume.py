"""Start-up and resume: how long until the first request, and until done, as history grows.

    python -m benchmarks.startup_resume [--rows 1000000] [--remainder 1000]

Every case sends the same small remainder (R records, new NMIs) to one simulator in a
separate process, quota lifted, register reset before each case. Times are from the
moment the parent spawns `wem-der` to the first request the simulator sees (both read
CLOCK_MONOTONIC, one clock for the whole machine) and to the process's exit:

  imports            `python -c "import wem_der.cli.commands, wem_der.run.wiring"`: the floor
  submit, fresh      `wem-der submit R.jsonl` with an empty state directory
  resume, empty      `wem-der resume RUN` of a run of R records of which none is done
  resume, 1M done    `wem-der resume RUN` of a run of ROWS + R records of which the first
                     ROWS are done: its input is ROWS + R records (about 1.2 GB) and its
                     ledger ROWS items, ROWS attempts and ROWS register records
  submit, 1M ledger  `wem-der submit R.jsonl` into the state directory holding that ledger

The run of ROWS done records is built directly with the pipeline's own ledger statements
(`wem_der.ledger.schema`), as a run killed after ROWS records would have left it: each
record's attempt answered and settled, its outcome line recorded, the NMI's last success
noted. Its remainder is the tail of its input, the worst case for the first request (a
resume reads its whole input to find the records not done).

The ratios compare resume over 1M done with resume over none, and submit beside a 1M-row
ledger with submit beside none.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wem_der.ledger import schema as sql
from wem_der.ledger.store import Ledger
from wem_der.records.outcomes import Action, Outcome, OutcomeRecord, SourceRef
from wem_der.records.samples import nmi
from wem_der.records.shapes import RecordKind
from wem_der.run.plan import RunPlan
from wem_der.run.start import LEDGER_FILE

from benchmarks._harness import (
    PYTHON,
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

KIND = RecordKind.INSTALLATION
CHUNK = 50_000


async def _start_run(state_dir: Path, plan: RunPlan) -> None:
    """Record the run as `wem-der submit` does at its start (through the Ledger API)."""
    async with Ledger(state_dir / LEDGER_FILE) as ledger:
        await ledger.start_run(
            run_id=plan.run_id,
            kind=plan.kind.value,
            out_dir=plan.out_dir,
            inputs=list(plan.inputs),
            settings={"plan": plan.as_json(), "settings": {}},
        )


def _done_rows(run_id: str, source: Path, start: int, count: int) -> Iterator[dict[str, Any]]:
    now = time.time()
    for seq in range(start, start + count):
        key = nmi(seq)
        digest = hashlib.sha256(key.encode()).hexdigest()
        txn = f"{seq:08x}-0000-4000-8000-000000000000"
        line = OutcomeRecord(
            kind=KIND,
            nmi=key,
            source=SourceRef(str(source), seq + 1),
            outcome=Outcome.ACCEPTED,
            action=Action.CREATE,
            http_status=200,
            transaction_id=txn,
            attempts=1,
            latency_ms=52.0,
            content_hash=digest,
            run_id=run_id,
        ).to_line()
        yield {"seq": seq, "nmi": key, "hash": digest, "txn": txn, "line": line, "at": now}


def build_history(state_dir: Path, plan: RunPlan, source: Path, rows: int) -> float:
    """A ledger holding `plan` with its first `rows` records done; returns seconds taken."""
    started = time.monotonic()
    asyncio.run(_start_run(state_dir, plan))
    run_id, kind = plan.run_id, KIND.value
    conn = sql.open_ledger(state_dir / LEDGER_FILE, busy_timeout_s=30)
    try:
        for start in range(0, rows, CHUNK):
            batch = list(_done_rows(run_id, source, start, min(CHUNK, rows - start)))
            conn.execute("BEGIN IMMEDIATE")
            first = conn.execute("SELECT COALESCE(MAX(attempt_id), 0) FROM attempts").fetchone()[0]
            conn.executemany(
                sql.BEGIN_ATTEMPT,
                [(run_id, r["seq"], kind, r["nmi"], "create", r["hash"], r["at"]) for r in batch],
            )
            # attempt_id is an INTEGER PRIMARY KEY: a fresh table numbers the rows in order.
            conn.executemany(
                sql.FINISH_ATTEMPT,
                [(r["at"], 200, r["txn"], first + i + 1) for i, r in enumerate(batch)],
            )
            conn.executemany(
                sql.UPSERT_ITEM,
                [(run_id, r["seq"], kind, r["nmi"], "accepted", r["at"], r["line"]) for r in batch],
            )
            conn.executemany(sql.SETTLE, [(run_id, r["seq"]) for r in batch])
            conn.executemany(
                sql.RECORD_SUCCESS,
                [(kind, r["nmi"], r["hash"], run_id, r["txn"], r["at"]) for r in batch],
            )
            conn.execute("COMMIT")
        unsettled = conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE settled = 0 OR finished_at IS NULL"
        ).fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    if unsettled:
        raise BenchError(f"the built ledger has {unsettled} unsettled attempts")
    return time.monotonic() - started


def _case(
    name: str,
    sim: SimProcess,
    command: list[str],
    directory: Path,
    expect_requests: int,
    out: Path | None,
) -> dict[str, Any]:
    sim.reset()
    stderr = directory / f"{name}.stderr"
    run = run_measured(
        command, timeout_s=3600, stdout=directory / f"{name}.out", stderr=stderr, name=name
    )
    arrivals = sim.arrivals()
    if len(arrivals) != expect_requests:
        raise BenchError(f"{name}: {len(arrivals)} requests, expected {expect_requests}")
    summary = wem_der_summary(out) if out is not None else {}
    return {
        "case": name,
        "first_request_s": arrivals[0] - run.started_at if arrivals else None,
        "done_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "maxrss_mb": run.maxrss_mb,
        "requests": len(arrivals),
        "records_in_summary": summary.get("records"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.startup_resume", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="records already done")
    parser.add_argument("--remainder", type=int, default=1000, help="records left to send")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    rows, remainder = args.rows, args.remainder
    if rows > 1_000_000:
        raise SystemExit("--rows: wem_der.records.samples has NMIs for at most 1,000,000 records")
    cases: list[dict[str, Any]] = []
    with workdir("startup", keep=args.keep) as directory:
        print("generating inputs ...", file=sys.stderr, flush=True)
        small = write_installations(directory / "small.jsonl", remainder, nmi_prefix="8002")
        other = write_installations(directory / "other.jsonl", remainder, nmi_prefix="8003")
        big = write_installations(directory / "big.jsonl", rows)
        with big.open("ab") as fh, small.open("rb") as tail_records:
            shutil.copyfileobj(tail_records, fh)  # the remainder is the input's tail
        empty_plan = RunPlan("bench-resume-empty", KIND, (str(small),), str(directory / "o-e"))
        big_plan = RunPlan("bench-resume-1m", KIND, (str(big),), str(directory / "o-1m"))
        print(f"building a ledger of {rows} done records ...", file=sys.stderr, flush=True)
        build_history(directory / "state-empty", empty_plan, small, 0)
        built_s = build_history(directory / "state-1m", big_plan, big, rows)
        ledger_mb = (directory / "state-1m" / LEDGER_FILE).stat().st_size / 2**20

        with simulator(directory / "sim") as sim:
            flags = sim.wem_der_flags()

            def submit(state: str, source: Path, tag: str) -> list[str]:
                return [
                    *WEM_DER, "submit", str(source), "--out", str(directory / f"o-{tag}"),
                    "--state-dir", str(directory / state), "--rate-limit", "1000000/1s", *flags,
                ]  # fmt: skip

            def resume(state: str, plan: RunPlan) -> list[str]:
                return [
                    *WEM_DER, "resume", plan.run_id, "--state-dir", str(directory / state),
                    "--rate-limit", "1000000/1s", *flags,
                ]  # fmt: skip

            imports = [PYTHON, "-c", "import wem_der.cli.commands, wem_der.run.wiring"]
            plan_of = [
                ("imports", imports, 0, None),
                ("submit, fresh", submit("state-fresh", small, "fresh"), remainder, "o-fresh"),
                ("resume, empty", resume("state-empty", empty_plan), remainder, "o-e"),
                (f"resume, {rows} done", resume("state-1m", big_plan), remainder, "o-1m"),
                (
                    f"submit, {rows}-row ledger",
                    submit("state-1m", other, "beside"),
                    remainder,
                    "o-beside",
                ),
            ]
            for name, command, requests, out in plan_of:
                print(f"{name} ...", file=sys.stderr, flush=True)
                tag = name.replace(" ", "_").replace(",", "")
                out_dir = directory / out if out else None
                cases.append(_case(tag, sim, command, directory, requests, out_dir))
                cases[-1]["case"] = name

    by_name = {c["case"]: c for c in cases}
    resume_big = by_name[f"resume, {rows} done"]
    resume_empty = by_name["resume, empty"]
    beside = by_name[f"submit, {rows}-row ledger"]
    fresh = by_name["submit, fresh"]
    ratios = {
        "resume_first_request": resume_big["first_request_s"] / resume_empty["first_request_s"],
        "resume_done": resume_big["done_s"] / resume_empty["done_s"],
        "submit_beside_ledger_first_request": beside["first_request_s"] / fresh["first_request_s"],
        "submit_beside_ledger_done": beside["done_s"] / fresh["done_s"],
    }
    headers = ["case", "first request s", "done s", "CPU s", "peak RSS MB"]
    rows_out = [
        [c["case"], c["first_request_s"], c["done_s"], c["cpu_s"], f"{c['maxrss_mb']:.0f}"]
        for c in cases
    ]
    title = f"start-up and resume: {remainder} records to send; ledger {ledger_mb:.0f} MB"
    print(table(headers, rows_out, title))
    print(
        f"\nresume over {rows} done / over none: {ratios['resume_first_request']:.1f}x to the"
        f" first request, {ratios['resume_done']:.1f}x to done"
        f"\nsubmit beside a {rows}-row ledger / beside none:"
        f" {ratios['submit_beside_ledger_first_request']:.1f}x to the first request,"
        f" {ratios['submit_beside_ledger_done']:.1f}x to done"
        f"\n(building the ledger took {built_s:.0f} s)"
    )
    path = write_result(
        "startup_resume",
        {
            "rows": rows,
            "remainder": remainder,
            "ledger_mb": ledger_mb,
            "ledger_build_s": built_s,
            "cases": cases,
            "ratios": ratios,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
