"""`wem-der report RUN --format html`: one page a person opens, that needs no network.

    collect() --dict--> to_html --> one HTML file: tables, and charts as PNG data: URIs

The charts are drawn by matplotlib (the optional extra `report`), on its Agg canvas and
never through pyplot: no window, no figure state shared between calls. Without
matplotlib the page has the same tables and says how to install it. Nothing on the page
points elsewhere: no script, no stylesheet, no image by URL.

Every value is escaped (`html.escape`, after `display.shown`): error titles come from the
register, paths and NMIs from the operator's files, the follow-up from the register again.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wem_der.errors import ConfigError, OutputError
from wem_der.files.pathtext import from_text
from wem_der.files.private import write_atomic
from wem_der.records.outcomes import Outcome, SourceRef
from wem_der.report.display import shown
from wem_der.report.outages import Outage, outages, to_epoch
from wem_der.report.text import MAX_ROWS, run_fields

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_CHARTS = "pip install 'wem-der-pipeline[report]'"
TOP_CODES = 20
# Tick steps a clock reads well, from a second to a week.
CLOCK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                 43200, 86400, 172800, 604800)  # fmt: skip
COLOURS = {
    Outcome.ACCEPTED: "#2e8b57",
    Outcome.CONDITIONAL: "#d4a017",
    Outcome.REJECTED: "#c0392b",
    Outcome.INVALID: "#8e44ad",
    Outcome.FAILED: "#7f1d1d",
    Outcome.SKIPPED: "#95a5a6",
}
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left;
         vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; }
.note { color: #555; }
"""


def to_html(report: dict[str, Any]) -> str:
    """The report of one run (`collect` with a run and no NMI) as a page."""
    if "run" not in report or "nmi" in report:
        raise ConfigError(
            "--format html shows one run: give RUN_ID or DIR without --nmi"
            " (an NMI's history is in --format text or json)"
        )
    run = report["run"]
    run_end = to_epoch(run["finished_at"]) if run["finished_at"] else None
    down = outages(run["summary"].get("outages"), run_end=run_end or _last(report["quota"]))
    charts = _charts()
    sections = [
        _facts(run),
        _quota(report["quota"], down, charts),
        _outcomes(report["outcomes"], charts),
        _errors(report["errors"]),
        _exceptions(report["exceptions"]),
        _followup(report["followup"], str(run["run_id"])),
    ]
    title = f"wem-der run {_e(run['run_id'])}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{title}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def write_page(path: Path, page: str) -> None:
    """Write the page to `path`, whole, readable by its owner only: like the outcome files,
    it names NMIs, input files and the register's answers."""
    try:
        write_atomic(path, page.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write the report {path} ({exc}); check --out") from exc


def _e(value: object) -> str:
    """A value as the page shows it: escaped for a terminal's sake, then for HTML's."""
    return "-" if value is None else html.escape(shown(str(value)))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: int = 0) -> str:
    """A table whose first `numeric` columns are numbers (right-aligned); no headers, no
    header row."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(cell)}</td>' if i < numeric else f"<td>{_e(cell)}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    return f"<table>{head}<tbody>\n{body}</tbody></table>"


def _section(key: str, heading: str, *parts: str) -> str:
    return f'<section id="{key}"><h2>{_e(heading)}</h2>\n' + "\n".join(parts) + "</section>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _facts(run: dict[str, Any]) -> str:
    return _section("run", "Run", _table((), run_fields(run)))


# -- charts -----------------------------------------------------------------------------------


def _charts() -> bool:
    try:
        import matplotlib  # noqa: F401 - only whether it can be imported
    except ImportError:
        return False
    return True


def _no_charts() -> str:
    return (
        '<p class="note">Charts need matplotlib, which is not installed here: '
        f"<code>{_e(INSTALL_CHARTS)}</code></p>"
    )


def _figure(height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _img(figure: Figure, alt: str) -> str:
    png = io.BytesIO()
    figure.savefig(png, format="png")
    data = base64.b64encode(png.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _quota_chart(quota: dict[str, Any], down: list[Outage]) -> str:
    figure = _figure(3.8)
    ax = figure.add_subplot()
    period_s = quota["period_s"]
    # x is Unix time in seconds: bars a period wide from the start of their period.
    starts = [to_epoch(w["start"]) for w in quota["windows"]]
    attempts = [w["attempts"] for w in quota["windows"]]
    throttled = [w["http_429"] for w in quota["windows"]]
    for heights, colour, label in (
        (attempts, "#4878a8", "write attempts"),
        (throttled, "#c0392b", "answered 429"),
    ):
        ax.bar(starts, heights, period_s, align="edge", color=colour, label=label)
    ax.axhline(
        quota["count"],
        color="#222222",
        linestyle="--",
        linewidth=1,
        label=f"quota: {quota['count']} per {period_s:g} s",
    )
    for i, outage in enumerate(down):
        marked = "register unavailable" if i == 0 else None
        # Behind the bars, so that the probes sent during the outage still show.
        ax.axvspan(outage.start, outage.end, color="#f39c12", alpha=0.3, label=marked, zorder=0)
    first = min([*starts, *(o.start for o in down)])
    last = max([*(at + period_s for at in starts), *(o.end for o in down)])
    _clock_axis(ax, first, last)
    ax.set_ylabel(f"per {period_s:g} s")
    ax.set_ylim(0, max([quota["count"], *attempts]) * 1.15)
    ax.legend(loc="upper right", fontsize="small")
    return _img(figure, "write attempts per quota period against the quota")


def _clock_axis(ax: Axes, first: float, last: float) -> None:
    """An x axis of Unix times, ticked at round UTC clock times about 8 times."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    span = max(last - first, 1.0)
    step = next((s for s in CLOCK_STEPS_S if span / s <= 8), CLOCK_STEPS_S[-1])
    shape = "%H:%M:%S" if step < 60 else "%H:%M"
    if span >= 86400:
        shape = "%m-%d " + shape
    ax.set_xlim(first - span * 0.01, last + span * 0.01)
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _utc(x, shape)))
    ax.set_xlabel(f"time (UTC) from {_utc(first, '%Y-%m-%d %H:%M:%S')}")


def _outcomes_chart(outcomes: dict[str, int]) -> str:
    figure = _figure(2.6)
    ax = figure.add_subplot()
    names = [o.value for o in Outcome]
    counts = [outcomes.get(name, 0) for name in names]
    bars = ax.barh(names, counts, color=[COLOURS[o] for o in Outcome])
    ax.bar_label(bars, padding=3)
    ax.invert_yaxis()  # in the order of the tables: accepted first
    ax.set_xlabel("records")
    ax.set_xlim(0, max(*counts, 1) * 1.12)
    return _img(figure, "records by outcome")


# -- sections -------------------------------------------------------------------------------


def _last(quota: dict[str, Any]) -> float:
    """The end of the last quota period with an attempt (Unix time): where a run that has
    not finished has got to, as far as the ledger knows."""
    if not quota["windows"]:
        return 0.0
    return to_epoch(quota["windows"][-1]["start"]) + float(quota["period_s"])


def _quota(quota: dict[str, Any], down: list[Outage], charts: bool) -> str:
    count, period = quota["count"], quota["period_s"]
    refused = sum(w["http_429"] for w in quota["windows"])
    parts = [
        _note(
            f"{quota['attempts']} write attempts, {refused} of them answered 429; quota {count}"
            f" per {period:g} s; fullest {period:g} s window {quota['fullest_window']}. An"
            " attempt counts in the period its answer came in (or it began in, if none"
            " came); read-backs are not counted here."
        )
    ]
    if not quota["windows"] and not down:
        parts.append(_note("No write attempt was made."))
    elif charts:
        parts.append(_quota_chart(quota, down))
    else:
        parts.append(_no_charts())
    if down:
        parts.append(
            _table(
                ("from (UTC)", "to (UTC)", "seconds", "probes"),
                ((_utc(o.start), _utc(o.end), f"{o.seconds:.0f}", o.probes) for o in down),
            )
        )
    return _section("quota", "Requests per period against the quota", *parts)


def _utc(epoch: float, shape: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(shape)


def _outcomes(outcomes: dict[str, int], charts: bool) -> str:
    rows = [(count, name) for name, count in outcomes.items()]
    rows.append((sum(outcomes.values()), "total"))
    chart = _outcomes_chart(outcomes) if charts else _no_charts()
    return _section(
        "outcomes", "Outcomes by class", chart, _table(("records", "outcome"), rows, numeric=1)
    )


def _example(example: dict[str, Any]) -> str:
    source = example.get("source") or {}
    where = SourceRef(from_text(source.get("path", "?")), source.get("line"), source.get("index"))
    parts = [f"NMI {example.get('nmi') or '-'}", str(where)]
    if example.get("http_status") is not None:
        parts.append(f"HTTP {example['http_status']}")
    if example.get("transaction_id"):
        parts.append(f"transaction {example['transaction_id']}")
    return ", ".join(parts)


def _top(rows: list[Any]) -> tuple[list[Any], str]:
    if len(rows) <= TOP_CODES:
        return rows, ""
    return rows[:TOP_CODES], _note(f"{len(rows) - TOP_CODES} more (see --format json)")


def _errors(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return _section("errors", "Top error codes", _note("None."))
    top, more = _top(errors)
    rows = ((e["count"], e["outcome"], e["code"], e["title"], _example(e["example"])) for e in top)
    return _section(
        "errors",
        "Top error codes",
        _note("rejected: AEMO's codes; invalid: 'local' and the field; failed: the reason."),
        _table(("records", "outcome", "code", "title", "for example"), rows, numeric=1),
        more,
    )


def _exceptions(exceptions: list[dict[str, Any]]) -> str:
    if not exceptions:
        return _section("exceptions", "Top exception codes (conditional)", _note("None."))
    top, more = _top(exceptions)
    rows = ((e["count"], e["code"], e["name"], _example(e["example"])) for e in top)
    return _section(
        "exceptions",
        "Top exception codes (conditional)",
        _table(("exceptions", "code", "name", "for example"), rows, numeric=1),
        more,
    )


def _codes(exceptions: object) -> str:
    """A follow-up's exceptions as `code name` items."""
    if not isinstance(exceptions, list) or not exceptions:
        return "-"
    return "; ".join(
        " ".join(str(e.get(k)) for k in ("code", "name") if e.get(k) is not None)
        if isinstance(e, dict)
        else str(e)
        for e in exceptions
    )


def _followup(followup: dict[str, Any] | None, run_id: str) -> str:
    heading = "Latest follow-up of the Conditional records"
    if followup is None:
        return _section("followup", heading, _note(f"None yet: wem-der followup {run_id}"))
    records = followup["records"]
    shown_rows = records[:MAX_ROWS]
    rows = (
        (
            r.get("nmi"),
            r.get("stage"),
            {True: "yes", False: "no"}.get(r.get("confirmed"), "-"),
            _codes(r.get("exceptions")),
        )
        for r in shown_rows
    )
    confirmed = sum(1 for r in records if r.get("confirmed") is True)
    parts = [
        _note(
            f"Read back {followup['written_at']} (UTC): {len(records)} records,"
            f" {confirmed} Confirmed since the run."
        ),
        _table(("NMI", "stage now", "Confirmed since", "exceptions now"), rows),
    ]
    if len(records) > MAX_ROWS:
        parts.append(_note(f"{len(records) - MAX_ROWS} more in followup.jsonl"))
    return _section("followup", heading, *parts)
