"""The report of `wem-der report` as plain-text tables, for people (report/collect.py gathers it).

Numbers are right-aligned, bars are scaled to the largest row (or to the quota), and long
lists are cut at MAX_ROWS with a line saying so: the JSON form always has everything.
Every value is shown through `display.shown`: error titles come from the register, paths
and NMIs from the operator's files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from wem_der.report.display import shown

MAX_ROWS = 50
BAR_WIDTH = 30


def to_text(report: dict[str, Any]) -> str:
    """The report as plain text tables."""
    parts: list[str] = []
    if "run" in report:
        parts.append(_run_text(report["run"]))
        parts.append(_outcomes_text(report["outcomes"]))
        parts.append(_errors_text(report["errors"]))
        parts.append(_exceptions_text(report["exceptions"]))
        parts.append(_quota_text(report["quota"]))
        parts.append(_outages_text(report["run"]["summary"].get("outages") or []))
        parts.append(_followup_text(report["followup"], str(report["run"]["run_id"])))
    if "nmi" in report:
        parts.append(_nmi_text(report["nmi"]))
    return "\n\n".join(parts)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "  ") -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if c is None else shown(str(c)) for c in r] for r in rows]
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


def run_fields(run: dict[str, Any]) -> list[tuple[str, object]]:
    """The facts of a run as (name, value) pairs, in the order a person reads them."""
    fields: list[tuple[str, object]] = [
        ("kind", run["kind"]),
        ("status", _status(run)),
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
        ("stderr_lost", "log lost"),
    ):
        if summary.get(key):
            fields.append((name, summary[key]))
    return fields


def _run_text(run: dict[str, Any]) -> str:
    fields = run_fields(run)
    width = max(len(name) for name, _ in fields)
    lines = [f"run {shown(str(run['run_id']))}"]
    lines += [f"  {name:<{width}}  {shown(str(value))}" for name, value in fields]
    return "\n".join(lines)


def _status(run: dict[str, Any]) -> str:
    if run["status"] == "running":
        # The ledger cannot tell a live run from a killed one; the person can.
        return f"running, or killed (then: wem-der resume {run['run_id']})"
    if run["status"] in {"interrupted", "aborted"}:
        return f"{run['status']} (send the rest with: wem-der resume {run['run_id']})"
    return str(run["status"])


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
        "  (an attempt counts when its answer came, or when it began if none came; read-backs\n"
        "  are not counted here: the run summary's requests and fullest window count them)"
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


def _outages_text(outages: list[dict[str, Any]]) -> str:
    """The times the register was down during the run, as summary.json lists them."""
    if not outages:
        return "register outages: none"
    rows = [
        (
            outage.get("start"),
            outage.get("end"),
            outage.get("probes"),
            "still down when the run stopped" if outage.get("still_down") else "",
        )
        for outage in outages
    ]
    text = "register outages:\n" + table(("from", "to", "probes", ""), rows)
    causes = {str(outage["cause"]) for outage in outages if outage.get("cause")}
    return text + "".join(f"\n  likely cause: {cause}" for cause in sorted(causes))


# How each status of a follow-up reads: what became of a record that ended conditional.
_FOLLOWUP_STATUSES = {
    "conditional": "still conditional",
    "confirmed": "now confirmed",
    "missing": "missing",
    "error": "error (not read)",
}


def _followup_text(followup: dict[str, Any] | None, run_id: str) -> str:
    if followup is None:
        return f"follow-up of the conditional records: none yet (wem-der followup {shown(run_id)})"
    counts = followup["counts"]
    rows = [(_FOLLOWUP_STATUSES.get(name, name), n) for name, n in counts.items()]
    rows.append(("total", sum(counts.values())))
    head = f"latest follow-up of the conditional records, read {followup['read_at']}\n"
    text = head + table(("now", "records"), rows)
    exceptions = followup["exceptions"]
    if not exceptions:
        return text + "\n  exception codes now: none given by the register"
    most = exceptions[0]["count"]
    cut, more = _cut(
        [(e["count"], e["code"], e["name"], _bar(e["count"], most)) for e in exceptions]
    )
    return (
        text
        + "\nexception codes now (follow-up)\n"
        + table(("exceptions", "code", "name", ""), cut)
        + more
    )


def _nmi_text(nmi: dict[str, Any]) -> str:
    lines = [f"history of {nmi['kind']} NMI {shown(str(nmi['nmi']))}"]
    exists = nmi["exists_at_register"]
    lines.append("  at the register: " + {True: "yes", False: "no", None: "unknown"}[exists])
    last = nmi["last_success"]
    if last:
        lines.append(
            f"  last accepted: run {shown(str(last['run_id']))}"
            f" transaction {shown(str(last['transaction_id'] or '-'))}"
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
