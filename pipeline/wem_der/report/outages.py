"""The register's outages during a run, as summary.json lists them (`outages`: `start`,
`end`, `probes` each), for the metrics and the HTML report.

An instant is an ISO 8601 text with its UTC offset or a Unix time; an outage without an
`end` had not ended when the run did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Outage:
    start: float  # Unix time
    end: float
    probes: int

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def outages(listed: Iterable[Mapping[str, Any]] | None, *, run_end: float) -> list[Outage]:
    """The outages of a summary, an open one ended at `run_end` (Unix time)."""
    return [
        Outage(
            start=to_epoch(outage["start"]),
            end=run_end if outage.get("end") is None else to_epoch(outage["end"]),
            probes=int(outage.get("probes") or 0),
        )
        for outage in listed or ()
    ]


def to_epoch(at: str | float) -> float:
    """An instant as Unix time."""
    if isinstance(at, int | float):
        return float(at)
    return datetime.fromisoformat(at).timestamp()
