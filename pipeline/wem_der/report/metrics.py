"""A run's Prometheus metrics, for a scheduler to scrape (`--metrics-file`) or a Pushgateway
to hold (`--metrics-push`).

    run --on_outcome, on_answer, set_in_flight, ...--> RunMetrics --collect()--> Prometheus text
    summary.json ------- finish(summary) / from_summary ---/      |--> write_textfile(path)
                                                                   \\-> push(url, job)

While a run goes, its hooks move the counters; at its end `finish` sets every value the
summary holds from the summary itself, so the last file written and the last push agree
with `summary.json` by construction, whatever a hook missed. The values live here, not in
prometheus_client's metric objects (which only count up), and each `RunMetrics` has a
registry of its own: two runs in one process never share a series, and nothing goes to the
process-wide registry.

No label names a record: an NMI per label value would make a series per installation, and
the file is read by people other than the ones allowed to see the NMIs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import structlog
from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from wem_der.errors import OutputError
from wem_der.records.outcomes import Outcome, OutcomeRecord
from wem_der.report.outages import outages, to_epoch
from wem_der.send.answers import status_label

log = structlog.get_logger("wem_der.metrics")

Sleep = Callable[[float], Awaitable[None]]

# A record left for `resume` (summary.json's `not_sent`) is not yet in any outcome: its own
# label, so that the labels add up to the summary's `records`.
NOT_SENT = "not_sent"
OUTCOME_LABELS: tuple[str, ...] = (*(o.value for o in Outcome), NOT_SENT)
SUCCESSES = frozenset({Outcome.ACCEPTED, Outcome.CONDITIONAL})
# The node_exporter textfile collector is read every scrape (15 s to a minute): a few
# seconds keeps the file as fresh as any scrape can see.
WRITE_EVERY_S = 5.0
PUSH_TIMEOUT_S = 10.0


class RunMetrics:
    """The metrics of one run, and the collector of its registry (`registry`)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._started = clock()
        self.records: Counter[str] = Counter(dict.fromkeys(OUTCOME_LABELS, 0))
        self.requests: Counter[str] = Counter()
        self.fullest_window = 0
        self.outage_s = 0.0
        self.in_flight = 0
        self.last_success_at: float | None = None
        self._duration_s: float | None = None  # set by `finish`; until then the clock's
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- what the run calls -----------------------------------------------------------------

    def on_outcome(self, outcome: OutcomeRecord, *, final: bool = True) -> None:
        """A record reached its outcome; `final` False: it was left for `resume` (not sent)."""
        self.records[outcome.outcome.value if final else NOT_SENT] += 1
        if final and outcome.outcome in SUCCESSES:
            self.last_success_at = self._wall_clock()

    def on_answer(self, status: int | None) -> None:
        """A request got an answer of `status` (None: dropped, refused or timed out)."""
        self.requests[status_label(status)] += 1

    def set_in_flight(self, count: int) -> None:
        self.in_flight = count

    def set_fullest_window(self, count: int) -> None:
        self.fullest_window = count

    def set_outage_s(self, seconds: float) -> None:
        """The time the register has been unavailable so far, open outage included."""
        self.outage_s = seconds

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Set every value that `summary` (summary.json) holds from it; none is in flight."""
        for label in OUTCOME_LABELS:
            self.records[label] = int(summary.get(label, 0))
        self.requests = Counter({k: int(v) for k, v in summary["requests_by_status"].items()})
        self.fullest_window = int(summary["max_requests_in_window"])
        run_end = to_epoch(summary["started_at"]) + float(summary["elapsed_s"])
        self.outage_s = sum(o.seconds for o in outages(summary.get("outages"), run_end=run_end))
        self.in_flight = 0
        self._duration_s = float(summary["elapsed_s"])

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> RunMetrics:
        """The metrics of a finished run, from its summary.json alone.

        The summary does not say when the last record succeeded: that gauge has no sample.
        """
        metrics = cls()
        metrics.finish(summary)
        return metrics

    # -- what Prometheus reads ----------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        records = CounterMetricFamily(
            "wem_der_records",
            "Input records by final outcome (not_sent: left for wem-der resume).",
            labels=["outcome"],
        )
        for label in OUTCOME_LABELS:
            records.add_metric([label], self.records[label])
        requests = CounterMetricFamily(
            "wem_der_requests",
            "HTTP requests to the register by answer status ('no answer': dropped, refused"
            " or timed out).",
            labels=["status"],
        )
        for status, count in sorted(self.requests.items()):
            requests.add_metric([status], count)
        last_success = GaugeMetricFamily(
            "wem_der_last_success_timestamp_seconds",
            "When a record last ended accepted or conditional (Unix time).",
        )
        if self.last_success_at is not None:
            last_success.add_metric([], self.last_success_at)
        duration = self._clock() - self._started if self._duration_s is None else self._duration_s
        return [
            records,
            requests,
            GaugeMetricFamily(
                "wem_der_quota_fullest_window",
                "The most requests granted in any one quota period so far.",
                value=self.fullest_window,
            ),
            CounterMetricFamily(
                "wem_der_outage_seconds",
                "Time the register was unavailable during the run.",
                value=self.outage_s,
            ),
            GaugeMetricFamily(
                "wem_der_in_flight", "Requests on the wire now.", value=self.in_flight
            ),
            GaugeMetricFamily(
                "wem_der_run_duration_seconds", "Time the run has taken so far.", value=duration
            ),
            last_success,
        ]

    # -- where it goes ------------------------------------------------------------------------

    def write_textfile(self, path: Path) -> None:
        """Write the Prometheus text to `path`: all of it or, on a crash, the previous file.

        prometheus_client writes a file beside it and renames it over `path`, so a scrape
        never reads half a file; the temporary name does not end in `.prom`, so the
        textfile collector never reads it either. The file holds no NMI and no secret, and
        node_exporter runs as a user of its own: it is written by the umask, not owner-only.
        """
        try:
            write_to_textfile(str(path), self.registry)
        except OSError as exc:
            raise OutputError(
                f"cannot write the metrics file {path} ({exc}); check --metrics-file"
            ) from exc

    async def push(self, url: str, job: str, *, timeout_s: float = PUSH_TIMEOUT_S) -> None:
        """Push the metrics to the Pushgateway at `url`, replacing those of `job`.

        prometheus_client pushes with blocking I/O: in a thread, so the run's event loop
        keeps going, and bounded both by the socket's timeout and by a wait for the thread.
        A push cancelled on its way (the run's end cancels the periodic one) is waited for
        before the cancellation goes on: a thread cannot be stopped, and one that landed
        after the final push would put older values back on the Pushgateway.
        """
        try:
            async with asyncio.timeout(timeout_s + 1):
                pushing = asyncio.ensure_future(
                    asyncio.to_thread(
                        push_to_gateway,
                        url,
                        job=job,
                        registry=self.registry,
                        timeout=timeout_s,
                        handler=_closing_handler,
                    )
                )
                try:
                    await asyncio.shield(pushing)
                except asyncio.CancelledError:
                    await asyncio.wait([pushing])
                    if not pushing.cancelled():
                        pushing.exception()  # retrieved: the cancellation is what goes on
                    raise
        except (OSError, TimeoutError) as exc:
            # The URL may carry credentials a Pushgateway behind a proxy asks for: its host only.
            where = urlsplit(url if "//" in url else "//" + url).netloc.rpartition("@")[2]
            raise OutputError(
                f"cannot push metrics to the Pushgateway at {where} ({type(exc).__name__}:"
                f" {exc}); check --metrics-push"
            ) from exc

    async def publish(self, file: Path | None, push_url: str | None, job: str) -> None:
        """Write the file and push, whichever are asked for."""
        if file is not None:
            self.write_textfile(file)
        if push_url is not None:
            await self.push(push_url, job)

    async def publish_every(
        self,
        file: Path | None,
        push_url: str | None,
        job: str,
        *,
        refresh: Callable[[RunMetrics], None] = lambda metrics: None,
        every_s: float = WRITE_EVERY_S,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Publish every `every_s` until cancelled (the run's TaskGroup owns the task).

        `refresh` reads the gauges from the run (in flight, the fullest window) just before
        each publication. One publication at a time: the next waits for the last to end. A
        failure is logged and the run goes on (a full disk or a Pushgateway down must not
        stop the submission); the final `publish` after `finish` reports it as an error.
        """
        while True:
            refresh(self)
            try:
                await self.publish(file, push_url, job)
            except OutputError as exc:
                log.warning("metrics.publish_failed", error=str(exc))
            await sleep(every_s)


def _closing_handler(
    url: str,
    method: str,
    timeout: float | None,
    headers: Sequence[tuple[str, str]],
    data: bytes,
) -> Callable[[], None]:
    """prometheus_client's default push, closing the Pushgateway's answer: its own never
    closes it, which leaves the socket to the garbage collector (a ResourceWarning)."""

    def handle() -> None:
        # push_to_gateway makes every URL it is given an http:// or https:// one.
        request = Request(url, data=data, method=method)  # noqa: S310 (http(s) only, as above)
        for name, value in headers:
            request.add_header(name, value)
        try:
            with urlopen(request, timeout=timeout) as answer:  # noqa: S310 (as above)
                answer.read()
        except HTTPError as exc:
            exc.close()  # an error answer holds its socket too
            raise

    return handle
