"""A client process whose CPU time `benchmarks.client_cost` reads: wem-der, or a floor.

    python -m benchmarks._cpu_child RESULT.json pipeline [--profile OUT.prof] -- WEM-DER ARGS
    BENCH_BEARER_TOKEN=... python -m benchmarks._cpu_child RESULT.json floor --input F
        --url U --participant P --concurrency N [--tuned-gc]
    BENCH_BEARER_TOKEN=... python -m benchmarks._cpu_child RESULT.json diy --input F
        --url U --participant P --concurrency N --outcomes OUT.jsonl [--profile OUT.prof]

Each imports what it needs first, then times only the run: `time.process_time()` (every
thread of this process, user + system) and the wall clock, written to RESULT.json. The
parent reads the whole process (imports included) from the kernel as well.

The floor is the least any Python client must spend to send these records: a bare
aiohttp loop posting payloads encoded before the clock starts, at the same concurrency,
reading each answer, with nothing recorded. `--tuned-gc` gives it wem-der's garbage
collector settings (`wem_der.cli.main.tune_gc`), to show what of the gap those settings close.

The do-it-yourself floor (`diy`) is the least an honest client must spend: everything the
bare floor does, plus the per-record work no client can skip, all inside the clock. It
reads the JSON Lines file as it goes, decodes each line, encodes `{"data": record}` with
orjson and gzips it (the same level and mtime), posts it with an explicit Content-Length
at the same concurrency, parses each answer and appends one outcome line (source line,
NMI, status, transaction id) to a plain buffered file. No ledger, no validation, no
retries, no log: what someone writing a one-off script would write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gzip
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

# The same level and mtime as wem_der.send.body, so the floor sends the same bytes.
GZIP_LEVEL = 6
TOKEN_ENV = "BENCH_BEARER_TOKEN"


def _pipeline(argv: list[str], profile: Path | None) -> dict[str, Any]:
    # What `wem-der` imports lazily, imported before the clock starts.
    import wem_der.cli.commands
    import wem_der.cli.main
    import wem_der.run.wiring

    threads = _count_thread_cpu()
    cpu, wall, main_cpu = time.process_time(), time.perf_counter(), time.thread_time()
    with _profiled(profile):
        code = wem_der.cli.main.main(argv)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    threads["main"] = time.thread_time() - main_cpu
    return {"exit_code": code, "cpu_s": cpu, "wall_s": wall, "threads_cpu_s": threads}


@contextlib.contextmanager
def _profiled(profile: Path | None) -> Iterator[None]:
    """cProfile the block into `profile`, if given."""
    if profile is None:
        yield
        return
    # The profiler's clock is this thread's CPU time, not the wall: a call that waits for
    # the GIL (os.write, a queue put, zlib) would otherwise be charged for the waiting.
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def _count_thread_cpu() -> dict[str, float]:
    """CPU seconds of every other thread, by name, added up as each thread ends.

    The input is read in a worker thread, and the ledger opens, checkpoints and closes its
    file in one of its own; their CPU is in the run's total but invisible to a profiler of
    the main thread.
    """
    spent: dict[str, float] = {}
    run = threading.Thread.run

    def counted(self: threading.Thread) -> None:
        try:
            run(self)
        finally:
            # Executor threads are named "asyncio_0", "asyncio_1"...: one line for them all.
            name = self.name.rstrip("0123456789").rstrip("_-") or self.name
            spent[name] = spent.get(name, 0.0) + time.thread_time()

    threading.Thread.run = counted  # type: ignore[method-assign]
    return spent


def _bodies(path: Path) -> list[bytes]:
    """Each record as wem-der sends it: `{"data": record}`, orjson, gzip."""
    out = []
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                raw = orjson.dumps({"data": orjson.loads(line)})
                out.append(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0))
    return out


def _headers(token: str, participant: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "X-initiatingParticipantID": participant,
        "X-market": "WEM",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }


async def _floor(
    bodies: list[bytes], url: str, token: str, participant: str, concurrency: int
) -> dict[str, Any]:
    headers = _headers(token, participant)
    statuses: Counter[int] = Counter()
    pending: Iterator[bytes] = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for body in pending:  # shared iterator: each body is taken once
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1

        cpu, wall = time.process_time(), time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "exit_code": 0,
        "cpu_s": cpu,
        "wall_s": wall,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


async def _diy(
    source: Path, url: str, token: str, participant: str, concurrency: int, outcomes: Path
) -> dict[str, Any]:
    headers = _headers(token, participant)
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    cpu, wall = time.process_time(), time.perf_counter()
    with source.open("rb") as lines, outcomes.open("ab") as out:
        numbered = enumerate(lines, start=1)  # shared iterator: each line is taken once
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def worker() -> None:
                for number, line in numbered:
                    if not line.strip():
                        continue
                    record = orjson.loads(line)
                    body = gzip.compress(
                        orjson.dumps({"data": record}), compresslevel=GZIP_LEVEL, mtime=0
                    )
                    sent = {**headers, "Content-Length": str(len(body))}
                    async with session.post(url, data=body, headers=sent) as response:
                        status = response.status
                        answer = await response.read()
                    try:
                        doc = orjson.loads(answer)
                    except orjson.JSONDecodeError:
                        doc = None
                    txn = doc.get("transactionId") if isinstance(doc, dict) else None
                    statuses[status] += 1
                    out.write(
                        orjson.dumps(
                            {
                                "line": number,
                                "nmi": record.get("nmi"),
                                "status": status,
                                "transactionId": txn,
                            },
                            option=orjson.OPT_APPEND_NEWLINE,
                        )
                    )

            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(worker())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "exit_code": 0,
        "cpu_s": cpu,
        "wall_s": wall,
        "records": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._cpu_child")
    parser.add_argument("result", type=Path)
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("pipeline")
    p.add_argument("--profile", type=Path)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    sending = argparse.ArgumentParser(add_help=False)
    sending.add_argument("--input", type=Path, required=True)
    sending.add_argument("--url", required=True)
    sending.add_argument("--participant", required=True)
    sending.add_argument("--concurrency", type=int, required=True)
    f = sub.add_parser("floor", parents=[sending])
    f.add_argument("--tuned-gc", action="store_true", help="wem-der's collector settings")
    d = sub.add_parser("diy", parents=[sending])
    d.add_argument("--outcomes", type=Path, required=True, help="the file to append to")
    d.add_argument("--profile", type=Path)
    args = parser.parse_args()
    if args.role == "pipeline":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        result = _pipeline(argv, args.profile)
    elif args.role == "diy":
        token = os.environ[TOKEN_ENV]
        with _profiled(args.profile):
            result = asyncio.run(
                _diy(
                    args.input, args.url, token, args.participant, args.concurrency,
                    args.outcomes,
                )
            )  # fmt: skip
    else:
        bodies = _bodies(args.input)
        if args.tuned_gc:
            from wem_der.cli.main import tune_gc

            tune_gc()
        # The token comes through the environment: a command line shows in `ps`.
        token = os.environ[TOKEN_ENV]
        result = asyncio.run(_floor(bodies, args.url, token, args.participant, args.concurrency))
        result["records"] = len(bodies)
    args.result.write_bytes(orjson.dumps(result))
    return int(result["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
