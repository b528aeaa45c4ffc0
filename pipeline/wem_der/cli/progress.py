"""What a person watching a run sees: a progress line on a terminal, and the closing table.

The progress line holds counts alone; each value of the closing table is shown through
`display.shown`, since the abort reason may quote an answer of the register.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from wem_der.read.formats import GZIP_MAGIC
from wem_der.records.outcomes import Outcome, OutcomeRecord
from wem_der.report.display import shown

REFRESH_S = 0.25
BAR_WIDTH = 24


class Progress:
    """Counts outcomes as they happen and redraws one status line on stderr."""

    def __init__(self, *, total: int | None = None, stream: TextIO | None = None) -> None:
        self.total = total
        self.counts: Counter[Outcome] = Counter()
        # sys.stderr as it is now, not at import: the CLI guards it (cli/guarded_output.py).
        self._stream = sys.stderr if stream is None else stream
        self._started = time.monotonic()  # set again by start(): the rate is of the run alone
        self._task: asyncio.Task[None] | None = None

    def on_outcome(self, outcome: OutcomeRecord) -> None:
        self.counts[outcome.outcome] += 1

    def line(self) -> str:
        done = sum(self.counts.values())
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = done / elapsed
        parts = []
        if self.total:
            frac = min(done / self.total, 1.0)
            filled = int(frac * BAR_WIDTH)
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total}")
            parts.append(f"ETA {_clock(eta)}")
        else:
            parts.append(f"{done} records")
        parts.append(f"{rate:.1f} rec/s")
        parts.extend(f"{o.value} {self.counts[o]}" for o in Outcome if self.counts[o])
        return " | ".join(parts)

    async def _draw(self) -> None:
        while True:
            self._stream.write("\r\x1b[2K" + self.line())
            self._stream.flush()
            await asyncio.sleep(REFRESH_S)

    def start(self) -> None:
        # Counted from here, not from construction: what comes between (counting the inputs,
        # opening the ledger, on resume rebuilding the outcome files) sends no record and
        # must not drag the rate down and the ETA out.
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._draw())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._stream.write("\r\x1b[2K" + self.line() + "\n")
            self._stream.flush()


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


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


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
    if summary.get("abort_reason"):
        rows.append(("stopped because", summary["abort_reason"]))
    if summary.get("stderr_lost"):
        rows.append(("log lost", summary["stderr_lost"]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {shown(str(value))}" for name, value in rows)
