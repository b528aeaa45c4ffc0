"""`wem-der report`: what a run did, and what happened to one NMI across runs.

    ledger --runs, items, attempts--> collect() --dict--> report_text.to_text (people)
                                                      |--> report_html.to_html (a page)
                                                      \\-> JSON (machines, --format json)

Everything comes from the ledger, so a report can be made of a run that was killed, of
one still going, and long after its outcome files were moved away. The problem codes are
counted from the outcome lines the ledger keeps, each with the first record that had it;
the quota table from the start times of the run's write attempts. Only the latest
follow-up of the run's Conditional records is read from its outcome directory
(`followup.jsonl`), where `wem-der followup` writes it (register/followup.py): its lines,
counted by status, and its exception codes.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from wem_der.config import Settings
from wem_der.errors import ConfigError, InputError
from wem_der.files.pathtext import from_text
from wem_der.ledger.store import Ledger, RunRow
from wem_der.records.outcomes import Outcome
from wem_der.records.shapes import RecordKind
from wem_der.register.followup import FOLLOWUP_JSONL, Status
from wem_der.report.html import to_html
from wem_der.report.text import to_text
from wem_der.send.quota import parse_rate

# A run recorded without its quota ran at the default one.
DEFAULT_RATE: str = Settings.model_fields["rate_limit"].default


async def render(
    ledger: Ledger,
    *,
    run_id: str | None,
    nmi: str | None,
    kind: RecordKind,
    fmt: str = "text",
) -> str:
    """The report of a run and/or the history of one NMI, as text tables or JSON."""
    report = await collect(ledger, run_id=run_id, nmi=nmi, kind=kind)
    if fmt == "json":
        return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    if fmt == "html":
        return to_html(report)
    if fmt != "text":
        raise ValueError(f"fmt must be 'text', 'json' or 'html', not {fmt!r}")
    return to_text(report)


async def collect(
    ledger: Ledger, *, run_id: str | None, nmi: str | None, kind: RecordKind
) -> dict[str, Any]:
    """The report as plain data (what `--format json` prints)."""
    report: dict[str, Any] = {}
    if run_id is not None:
        row = await ledger.get_run(run_id)
        if row is None:
            raise ConfigError(f"no run {run_id!r} in the ledger; check --state-dir")
        report["run"] = _run(row, [child.run_id for child in await ledger.child_runs(run_id)])
        counts = await ledger.outcome_counts(run_id)
        report["outcomes"] = {o.value: counts.get(o.value, 0) for o in Outcome}
        report["errors"], report["exceptions"] = await _problems(ledger, run_id)
        report["quota"] = quota_use(
            await ledger.attempt_times(run_id),
            _rate(row),
            throttled=await ledger.attempt_times(run_id, http_status=429),
        )
        report["followup"] = latest_followup(Path(from_text(row.out_dir)))
    if nmi is not None:
        report["nmi"] = await _nmi(ledger, kind, nmi)
    return report


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return f"{datetime.fromtimestamp(at, UTC):%Y-%m-%dT%H:%M:%SZ}"


def _rate(row: RunRow) -> str:
    settings = row.settings.get("settings")
    rate = settings.get("rate_limit") if isinstance(settings, dict) else None
    return rate if isinstance(rate, str) else DEFAULT_RATE


def _run(row: RunRow, children: list[str]) -> dict[str, Any]:
    summary = row.summary or {}
    return {
        "run_id": row.run_id,
        "kind": row.kind,
        "status": row.status,
        "created_at": _iso(row.created_at),
        "finished_at": _iso(row.finished_at),
        "out_dir": row.out_dir,
        "inputs": row.inputs,
        "parent_run_id": row.parent_run_id,
        "resubmitted_by": children,
        # The summary of the run's last invocation (a resumed run counts its last part).
        "summary": {
            key: summary[key]
            for key in (
                "records",
                "not_sent",
                "requests",
                "http_429",
                "reconciliations",
                "token_refreshes",
                "max_requests_in_window",
                "rate_limit",
                "elapsed_s",
                "abort_reason",
                "stderr_lost",
                "outages",
            )
            if key in summary
        },
    }


async def _problems(
    ledger: Ledger, run_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Histograms of the run's error codes (per outcome) and of its exception codes, each
    code with the first record (in input order) that had it."""
    errors: Counter[tuple[str, str, str]] = Counter()
    exceptions: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, ...], dict[str, Any]] = {}
    wanted = (Outcome.REJECTED, Outcome.INVALID, Outcome.FAILED, Outcome.CONDITIONAL)
    async for item in ledger.iter_run_items(run_id, wanted):
        line = orjson.loads(item.line)
        found = line.get("errors") or []
        codes = [
            (item.outcome, _text(error.get("code")), _text(error.get("title"))) for error in found
        ]
        if not found and item.outcome == Outcome.FAILED:
            # A failure without an answer from AEMO: its reason says what went wrong.
            codes.append((item.outcome, "-", _text(line.get("reason"))))
        errors.update(codes)
        names = [
            (_text(exception.get("code")), _text(exception.get("name", exception.get("title"))))
            for exception in line.get("exceptions") or []
        ]
        exceptions.update(names)
        for key in (*codes, *names):
            examples.setdefault(key, _example(line))
    return (
        [
            {
                "outcome": outcome,
                "code": code,
                "title": title,
                "count": count,
                "example": examples[(outcome, code, title)],
            }
            for (outcome, code, title), count in _ranked(errors)
        ],
        [
            {"code": code, "name": name, "count": count, "example": examples[(code, name)]}
            for (code, name), count in _ranked(exceptions)
        ],
    )


def _example(line: dict[str, Any]) -> dict[str, Any]:
    """Which record an outcome line is about, to look it up in the outcome files."""
    return {
        "nmi": line.get("nmi"),
        "source": line.get("source"),
        "http_status": line.get("http_status"),
        "transaction_id": line.get("transaction_id"),
    }


def latest_followup(out_dir: Path) -> dict[str, Any] | None:
    """The follow-up of the run's Conditional records that `wem-der followup` wrote last
    (`followup.jsonl` in the run's outcome directory, one JSON object a line: `nmi`,
    `status`, `stage`, `confirmed`, `exceptions`, `read_at`...); None if there is none.

    With its lines: when it was read (the earliest `read_at`; a line without one counts
    as read when the file was written), how many records are in each status (a line
    without one is `confirmed` or `conditional` by its `confirmed`), and its exception
    codes, most frequent first.
    """
    path = out_dir / FOLLOWUP_JSONL
    try:
        with path.open("rb") as lines:
            written = os.fstat(lines.fileno()).st_mtime
            records = [orjson.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"cannot read the follow-up {path}: {exc}") from exc
    found = [record for record in records if isinstance(record, dict)]
    counts = Counter(_followup_status(record) for record in found)
    codes: Counter[tuple[str, str]] = Counter(
        (_text(exception.get("code")), _text(exception.get("name", exception.get("title"))))
        for record in found
        for exception in record.get("exceptions") or ()
        if isinstance(exception, dict)
    )
    return {
        "written_at": _iso(written),
        "read_at": _earliest([record.get("read_at") for record in found]) or _iso(written),
        "counts": {status.value: counts[status.value] for status in Status},
        "exceptions": [
            {"code": code, "name": name, "count": count} for (code, name), count in _ranked(codes)
        ],
        "records": records,
    }


def _followup_status(record: dict[str, Any]) -> str:
    status = record.get("status")
    if status in {s.value for s in Status}:
        return str(status)
    return (Status.CONFIRMED if record.get("confirmed") is True else Status.CONDITIONAL).value


def _earliest(times: list[object]) -> str | None:
    """The earliest of ISO times with a UTC offset, as `_iso` writes them; None if none
    can be read."""
    found = []
    for at in times:
        with contextlib.suppress(TypeError, ValueError):
            found.append(datetime.fromisoformat(str(at)).timestamp())
    return _iso(min(found, default=None))


def _ranked(counter: Counter[Any]) -> list[tuple[Any, int]]:
    # Most frequent first; ties in a stable order so that reports can be compared.
    return sorted(counter.items(), key=lambda pair: (-pair[1], pair[0]))


def _text(value: object) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def quota_use(
    starts: Sequence[float], rate: str, *, throttled: Sequence[float] = ()
) -> dict[str, Any]:
    """Write attempts per quota period (and of those, the ones answered 429: `throttled`,
    their start times), and the fullest sliding window of one period.

    Periods are counted from the run's first attempt; periods with no attempt (a resume
    a day later) are left out rather than listed empty.
    """
    count, period_s = parse_rate(rate)
    windows: Counter[int] = Counter()
    first = starts[0] if starts else 0.0
    for at in starts:
        windows[int((at - first) // period_s)] += 1
    refused: Counter[int] = Counter(int((at - first) // period_s) for at in throttled)
    fullest = 0
    for i, at in enumerate(starts):  # `starts` is ascending
        fullest = max(fullest, bisect.bisect_left(starts, at + period_s, lo=i) - i)
    return {
        "rate_limit": rate,
        "count": count,
        "period_s": period_s,
        "attempts": len(starts),
        "fullest_window": fullest,
        "windows": [
            {"start": _iso(first + k * period_s), "attempts": n, "http_429": refused[k]}
            for k, n in sorted(windows.items())
        ],
    }


async def _nmi(ledger: Ledger, kind: RecordKind, nmi: str) -> dict[str, Any]:
    state = (await ledger.lookup([(kind.value, nmi)])).get((kind.value, nmi))
    history = await ledger.history(kind.value, nmi)
    return {
        "kind": kind.value,
        "nmi": nmi,
        "exists_at_register": state.exists if state else None,
        "last_success": (
            {
                "run_id": state.last_success_run,
                "transaction_id": state.last_success_txn,
                "content_hash": state.last_success_hash,
                "at": _iso(state.last_success_at),
            }
            if state and state.last_success_run
            else None
        ),
        "events": [
            {
                "at": _iso(event.at),
                "run_id": event.run_id,
                "seq": event.seq,
                "event": event.event,
                "action": event.action,
                "http_status": event.http_status,
                "transaction_id": event.transaction_id,
                "outcome": event.outcome,
                "content_hash": event.content_hash,
            }
            for event in history
        ],
    }
