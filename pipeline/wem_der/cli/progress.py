"""What a person watching a run sees: a progress bar on a terminal, and the closing table.

The bar is rich's, its columns holding counts alone; each value of the closing table is
shown through `display.shown`, since the abort reason may quote an answer of the register.
"""

from __future__ import annotations

import os
import stat
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich import progress as bar
from rich.console import Console
from rich.text import Text

from wem_der.read.formats import GZIP_MAGIC
from wem_der.records.outcomes import Outcome, OutcomeRecord
from wem_der.report.display import shown
from wem_der.report.outages import outages, to_epoch
from wem_der.send.breaker import shown_duration


class Progress:
    """Counts outcomes as they happen and shows them on a bar on stderr:
    `done/total rec/s ETA time-left outcome counts`, redrawn by rich from its own thread.

    The rate and the time left are of the outcomes of the last 30 seconds (rich's speed
    estimate): what came before the first (counting the inputs, opening the ledger, on
    resume rebuilding the outcome files) is not in them, and they follow a quota that is
    lowered after a 429 and recovers.
    """

    def __init__(
        self,
        *,
        total: int | None = None,
        console: Console | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.total = total
        self.counts: Counter[Outcome] = Counter()
        self._bar = bar.Progress(
            bar.BarColumn(bar_width=24),
            bar.MofNCompleteColumn(),
            _RateColumn(),
            "ETA",
            bar.TimeRemainingColumn(),
            _CountsColumn(self),
            # sys.stderr as it is now, not at import: the CLI guards it (cli/guarded_output.py).
            console=console or Console(file=sys.stderr),
            refresh_per_second=4,
            # What the run prints on stderr (its notes, the "stopping" line) goes above the
            # bar; stdout is left alone: it may be a file, for the closing table.
            redirect_stdout=False,
            get_time=clock,
        )
        self._task = self._bar.add_task("", total=total)
        # What the run says of the register while it is down (None: nothing to say).
        self.status: Callable[[], str | None] = lambda: None

    def on_outcome(self, outcome: OutcomeRecord) -> None:
        self.counts[outcome.outcome] += 1
        self._bar.advance(self._task)

    def advance(self) -> None:
        """One more item done that is not a record's outcome (a record verified, an
        installation exported): counted on the bar alone."""
        self._bar.advance(self._task)

    def watch(self, status: Callable[[], str | None]) -> None:
        """Show `status()` after the counts while it is not None, as "register unavailable
        since 02:13; next probe in 40 s"."""
        self.status = status

    def start(self) -> None:
        self._bar.update(self._task, total=self.total)
        self._bar.start()

    async def stop(self) -> None:
        # Drawn one last time, and left on the screen.
        self._bar.stop()


class _RateColumn(bar.ProgressColumn):
    def render(self, task: bar.Task) -> Text:
        speed = task.speed
        return Text("-- rec/s" if speed is None else f"{speed:.1f} rec/s")


class _CountsColumn(bar.ProgressColumn):
    """The count of each outcome seen so far, `accepted 9  rejected 1`, and the run's
    status while it waits for the register."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress

    def render(self, task: bar.Task) -> Text:
        counts = self._progress.counts
        # By Outcome, not over the Counter: this runs in rich's thread while the run adds keys.
        text = Text("  ".join(f"{o.value} {counts[o]}" for o in Outcome if counts[o]))
        status = self._progress.status()
        if status is not None:
            text.append(f"  {shown(status)}", style="bold yellow")
        return text


def estimate_records(paths: Sequence[str]) -> int | None:
    """Lines in plain JSONL inputs, for the bar's total and ETA; None when it cannot tell.

    Counting newlines runs at disk speed; gzip, stdin and JSON arrays would need a parse.
    Only regular files are counted, and their type is known before they are opened: what
    is read from a named pipe is gone, so the run would read it empty (and opening one
    waits for a writer).
    """
    total = 0
    for path in paths:
        if path == "-":
            return None
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None
            with open(path, "rb") as file:
                head = file.read(1 << 20)
                if head.startswith(GZIP_MAGIC) or head.lstrip()[:1] == b"[":
                    return None
                total += head.count(b"\n")
                last = head[-1:]
                while chunk := file.read(1 << 20):
                    total += chunk.count(b"\n")
                    last = chunk[-1:]
                # A last record without a newline is a record all the same.
                total += last not in {b"", b"\n"}
        except OSError:
            return None
    return total


def summary_table(summary: Mapping[str, Any]) -> str:
    """The closing table printed after a run."""
    rows = [("run", summary.get("run_id", "")), ("status", summary.get("status", ""))]
    rows.append(("records", summary.get("records", 0)))
    rows.extend((o.value, summary.get(o.value, 0)) for o in Outcome)
    if summary.get("not_sent"):
        rows.append(("not sent", summary["not_sent"]))
    rows.append(("requests", summary.get("requests", 0)))
    rows.append(("HTTP 429", summary.get("http_429", 0)))
    rows.append(
        (
            "fullest window",
            f"{summary.get('max_requests_in_window', 0)} (quota {summary.get('rate_limit', '')})",
        )
    )
    rows.append(("elapsed", f"{summary.get('elapsed_s', 0)} s"))
    if summary.get("outages"):
        rows.append(("register down", _downtime(summary)))
    if summary.get("abort_reason"):
        rows.append(("stopped because", summary["abort_reason"]))
    if summary.get("stderr_lost"):
        rows.append(("log lost", summary["stderr_lost"]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {shown(str(value))}" for name, value in rows)


def _downtime(summary: Mapping[str, Any]) -> str:
    """`2 times, 4 min 10 s in all, 9 probes`: the outages the run waited out."""
    run_end = to_epoch(summary["started_at"]) + float(summary.get("elapsed_s") or 0)
    down = outages(summary["outages"], run_end=run_end)
    times = "once" if len(down) == 1 else f"{len(down)} times"
    seconds = sum(outage.seconds for outage in down)
    probes = sum(outage.probes for outage in down)
    return f"{times}, {shown_duration(seconds)} in all, {probes} probes"
