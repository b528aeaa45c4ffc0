"""The public API as a scheduler's task writes it, for mypy (`mypy` checks tests/); pytest
does not collect it and nothing runs it.

Each `type: ignore[...]` marks a mistake mypy must report: strict mypy fails on an ignore
that is not needed, so a keyword that stopped being checked would fail the type check.
"""

from __future__ import annotations

from pathlib import Path
from typing import assert_type

import wem_der


async def nightly(secret_file: Path) -> int:
    try:
        result = await wem_der.submit(
            ["nightly.jsonl.gz", Path("extra.jsonl")],
            out=Path("runs/today"),
            env="preprod",
            participant_id="NSP01",
            client_secret_file=secret_file,
            rate_limit="6000/60s",
            concurrency=50,
            action="upsert",
            kind="installation",
            force=False,
        )
    except wem_der.RunAborted as aborted:
        assert_type(aborted.run_id, str | None)
        if aborted.run_id is None:
            raise
        result = await wem_der.resume(aborted.run_id, client_secret_file=secret_file)
    assert_type(result, wem_der.RunResult)
    assert_type(result.summary, wem_der.Summary)
    assert_type(result.summary.accepted, int)
    assert_type(result.summary.elapsed_s, float)
    assert_type(result.out_dir, Path)
    if result.summary.rejected:
        await wem_der.resubmit(
            result.out_dir, only=["rejected"], with_="fixed.jsonl", client_secret_file=secret_file
        )
    checked = await wem_der.validate(["tomorrow.jsonl"], kind="nmi", allow_unknown_fields=True)
    assert_type(checked, wem_der.ValidationResult)
    return result.exit_code + checked.exit_code


async def audit() -> bool:
    found = await wem_der.verify(["nightly.jsonl"], out="verify", env="prod", search_batch_size=50)
    assert_type(found, wem_der.VerifyResult)
    written = await wem_der.export(out="-", stage="Conditional", nmi_file=Path("nmis.txt"))
    assert_type(written, wem_der.ExportResult)
    return found.all_same and written.records > 0


async def mistakes() -> None:
    await wem_der.submit(["in.jsonl"], out="out", concurency=50)  # type: ignore[call-arg]
    await wem_der.submit(["in.jsonl"], out="out", action="delete")  # type: ignore[arg-type]
    await wem_der.submit(["in.jsonl"], out="out", concurrency="50")  # type: ignore[arg-type]
    await wem_der.submit(["in.jsonl"])  # type: ignore[call-arg]
    await wem_der.submit(["in.jsonl"], out="out", plan="delta")  # type: ignore[arg-type]
    await wem_der.export(out="-", stage="Provisional")  # type: ignore[arg-type]
    await wem_der.resubmit("run", kind="nmi")  # type: ignore[call-arg]
    await wem_der.validate(["in.jsonl"], participant_id="NSP01")  # type: ignore[call-arg]
    result = await wem_der.resume("run")
    result.summary.accepted = 0  # type: ignore[misc]
