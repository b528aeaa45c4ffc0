"""`wem-der report`: what a run did, and what happened to one NMI across runs.

    ledger --runs, items, attempts--> collect() --dict--> text tables (people)
                                                      \\-> JSON (machines, --format json)

Everything comes from the ledger, so a report can be made of a run that was killed, of
one still going, and long after its outcome files were moved away. The problem codes are
counted from the outcome lines the ledger keeps; the quota table from the start times of
the run's write attempts.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.errors import ConfigError
from pipeline.ledger import Ledger, RunRow
from pipeline.limiter import parse_rate
from pipeline.models import RecordKind
from pipeline.outcomes import Outcome

DEFAULT_RATE = "6000/60s"
# Text tables stay readable: longer lists are cut, with a line saying how much was left out
# (the JSON form always has everything).
MAX_ROWS = 50
BAR_WIDTH = 30


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
    if fmt != "text":
        raise ValueError(f"fmt must be 'text' or 'json', not {fmt!r}")
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
        report["quota"] = quota_use(await ledger.attempt_starts(run_id), _rate(row))
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
            )
            if key in summary
        },
    }


async def _problems(
    ledger: Ledger, run_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Histograms of the run's error codes (per outcome) and of its exception codes."""
    errors: Counter[tuple[str, str, str]] = Counter()
    exceptions: Counter[tuple[str, str]] = Counter()
    wanted = (Outcome.REJECTED, Outcome.INVALID, Outcome.FAILED, Outcome.CONDITIONAL)
    async for item in ledger.iter_run_items(run_id, wanted):
        line = orjson.loads(item.line)
        found = line.get("errors") or []
        for error in found:
            errors[(item.outcome, _text(error.get("code")), _text(error.get("title")))] += 1
        if not found and item.outcome == Outcome.FAILED:
            # A failure without an answer from AEMO: its reason says what went wrong.
            errors[(item.outcome, "-", _text(line.get("reason")))] += 1
        for exception in line.get("exceptions") or []:
            name = exception.get("name", exception.get("title"))
            exceptions[(_text(exception.get("code")), _text(name))] += 1
    return (
        [
            {"outcome": outcome, "code": code, "title": title, "count": count}
            for (outcome, code, title), count in _ranked(errors)
        ],
        [
            {"code": code, "name": name, "count": count}
            for (code, name), count in _ranked(exceptions)
        ],
    )


def _ranked(counter: Counter[Any]) -> list[tuple[Any, int]]:
    # Most frequent first; ties in a stable order so that reports can be compared.
    return sorted(counter.items(), key=lambda pair: (-pair[1], pair[0]))


def _text(value: object) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def quota_use(starts: Sequence[float], rate: str) -> dict[str, Any]:
    """Write attempts per quota period, and the fullest sliding window of one period.

    Periods are counted from the run's first attempt; periods with no attempt (a resume
    a day later) are left out rather than listed empty.
    """
    count, period_s = parse_rate(rate)
    windows: Counter[int] = Counter()
    first = starts[0] if starts else 0.0
    for at in starts:
        windows[int((at - first) // period_s)] += 1
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
            {"start": _iso(first + k * period_s), "attempts": n} for k, n in sorted(windows.items())
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


# -- text ----------------------------------------------------------------------------------


def to_text(report: dict[str, Any]) -> str:
    """The report as plain text tables."""
    parts: list[str] = []
    if "run" in report:
        parts.append(_run_text(report["run"]))
        parts.append(_outcomes_text(report["outcomes"]))
        parts.append(_errors_text(report["errors"]))
        parts.append(_exceptions_text(report["exceptions"]))
        parts.append(_quota_text(report["quota"]))
    if "nmi" in report:
        parts.append(_nmi_text(report["nmi"]))
    return "\n\n".join(parts)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "  ") -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append(indent + "  ".join(padded).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    return text.replace(".", "", 1).replace("%", "").lstrip("-").isdigit() or text == "-"


def _bar(n: int, most: int) -> str:
    return "#" * max(1, round(BAR_WIDTH * n / most)) if most and n else ""


def _cut(rows: list[Any], *, latest: bool = False) -> tuple[list[Any], str]:
    """At most MAX_ROWS rows: the first ones, or with `latest` the last ones."""
    if len(rows) <= MAX_ROWS:
        return rows, ""
    note = f"  ... {len(rows) - MAX_ROWS} {'earlier' if latest else 'more'} (see --format json)"
    if latest:
        return rows[-MAX_ROWS:], note + "\n"
    return rows[:MAX_ROWS], "\n" + note


def _run_text(run: dict[str, Any]) -> str:
    fields: list[tuple[str, object]] = [
        ("kind", run["kind"]),
        ("status", run["status"]),
        ("started", run["created_at"]),
        ("finished", run["finished_at"] or "-"),
        ("outcomes in", run["out_dir"]),
        *(("input", path) for path in run["inputs"]),
    ]
    if run["parent_run_id"]:
        fields.append(("re-submits run", run["parent_run_id"]))
    fields.extend(("re-submitted by", child) for child in run["resubmitted_by"])
    summary = run["summary"]
    for key, name in (
        ("requests", "requests (last part)"),
        ("http_429", "HTTP 429"),
        ("reconciliations", "read-backs"),
        ("not_sent", "not sent yet"),
        ("elapsed_s", "elapsed s (last part)"),
        ("abort_reason", "stopped because"),
    ):
        if summary.get(key):
            fields.append((name, summary[key]))
    width = max(len(name) for name, _ in fields)
    lines = [f"run {run['run_id']}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in fields]
    return "\n".join(lines)


def _outcomes_text(outcomes: dict[str, int]) -> str:
    total = sum(outcomes.values())
    most = max(outcomes.values(), default=0)
    rows = [(name, n, _bar(n, most)) for name, n in outcomes.items()]
    rows.append(("total", total, ""))
    return "outcomes (final, from the ledger)\n" + table(("outcome", "records", ""), rows)


def _errors_text(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return "error codes: none"
    most = errors[0]["count"]
    rows, more = _cut(
        [(e["count"], e["outcome"], e["code"], e["title"], _bar(e["count"], most)) for e in errors]
    )
    return (
        "error codes (rejected: AEMO's; invalid: 'local' and the field; failed: the reason)\n"
        + table(("records", "outcome", "code", "title", ""), rows)
        + more
    )


def _exceptions_text(exceptions: list[dict[str, Any]]) -> str:
    if not exceptions:
        return "exception codes (conditional): none"
    most = exceptions[0]["count"]
    rows, more = _cut(
        [(e["count"], e["code"], e["name"], _bar(e["count"], most)) for e in exceptions]
    )
    return (
        "exception codes (conditional)\n" + table(("exceptions", "code", "name", ""), rows) + more
    )


def _quota_text(quota: dict[str, Any]) -> str:
    count, period = quota["count"], quota["period_s"]
    head = (
        f"quota use: {quota['attempts']} write attempts; quota {count} per {period:g} s;"
        f" fullest {period:g} s window {quota['fullest_window']}"
        f" ({100 * quota['fullest_window'] / count:.1f}% of the quota)\n"
        "  (an attempt counts when it began, before its wait for the quota; read-backs are\n"
        "  not counted here: the run summary's requests and fullest window count them)"
    )
    if not quota["windows"]:
        return head
    rows, more = _cut(
        [
            (
                w["start"],
                w["attempts"],
                f"{100 * w['attempts'] / count:.1f}%",
                _bar(w["attempts"], count),
            )
            for w in quota["windows"]
        ]
    )
    return head + "\n" + table(("period from (UTC)", "attempts", "of quota", ""), rows) + more


def _nmi_text(nmi: dict[str, Any]) -> str:
    lines = [f"history of {nmi['kind']} NMI {nmi['nmi']}"]
    exists = nmi["exists_at_register"]
    lines.append("  at the register: " + {True: "yes", False: "no", None: "unknown"}[exists])
    last = nmi["last_success"]
    if last:
        lines.append(
            f"  last accepted: run {last['run_id']} transaction {last['transaction_id'] or '-'}"
            f" at {last['at']} (content {str(last['content_hash'])[:12]})"
        )
    if not nmi["events"]:
        lines.append("  no attempt or outcome recorded for this NMI")
        return "\n".join(lines)
    rows = [
        (
            e["at"],
            e["run_id"],
            e["seq"],
            e["event"],
            e["action"],
            e["http_status"]
            if e["http_status"] is not None
            else ("no answer" if e["event"] == "attempt" else None),
            e["transaction_id"],
            e["outcome"],
            (e["content_hash"] or "")[:12] or None,
        )
        for e in nmi["events"]
    ]
    rows, earlier = _cut(rows, latest=True)
    headers = (
        "time (UTC)",
        "run",
        "seq",
        "event",
        "action",
        "http",
        "transaction",
        "outcome",
        "content",
    )
    return "\n".join(lines) + "\n" + earlier + table(headers, rows)
