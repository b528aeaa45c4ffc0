"""A run's Prometheus metrics: what the textfile and a push hold agrees with summary.json;
the periodic writer; the Pushgateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from wem_der.errors import OutputError
from wem_der.records.outcomes import Outcome, OutcomeRecord, SourceRef
from wem_der.records.shapes import RecordKind
from wem_der.report.metrics import OUTCOME_LABELS, RunMetrics
from wem_der.run.wiring import Hooks
from wem_der.simulator import FaultProfile, Simulator

from tests.e2e import read_outcomes, read_summary, run_settings, sim_settings, submit
from tests.processes import Sim, wem_der
from tests.scripted import Reply, Scripted

SAMPLES = Path(__file__).parents[1] / "pipeline" / "wem_der" / "data"
PROM = "wem_der.prom"

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def samples(text: str) -> Samples:
    """sample name -> labels -> value, parsed by prometheus_client's own text parser."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


def by_label(found: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in found[name].items()}


def one(found: Samples, name: str) -> float:
    (value,) = found[name].values()
    return value


def assert_agrees(found: Samples, summary: dict[str, Any]) -> None:
    """Every value the summary holds is in the metrics, and no other series."""
    records = by_label(found, "wem_der_records_total", "outcome")
    assert records == {label: summary.get(label, 0) for label in OUTCOME_LABELS}
    assert sum(records.values()) == summary["records"]
    requests = by_label(found, "wem_der_requests_total", "status")
    assert requests == summary["requests_by_status"]
    assert sum(requests.values()) == summary["requests"]
    assert one(found, "wem_der_quota_fullest_window") == summary["max_requests_in_window"]
    assert one(found, "wem_der_run_duration_seconds") == summary["elapsed_s"]
    assert one(found, "wem_der_in_flight") == 0
    assert one(found, "wem_der_outage_seconds_total") == 0


async def test_the_metrics_file_of_a_run_agrees_with_its_summary(tmp_path: Path) -> None:
    """A run with every kind of outcome, 503s and dropped connections: the textfile written
    at its end holds the summary's counts, no label names a record, and the counts its
    hooks made while it ran were already the summary's."""
    metrics = RunMetrics()
    before = time.time()
    faults = FaultProfile(error_rate_503=0.1, drop_rate=0.05)
    async with asyncio.timeout(60), Simulator(sim_settings(faults=faults, seed=3)) as sim:
        settings = run_settings(sim, tmp_path)
        hooks = Hooks(on_outcome=metrics.on_outcome)
        inputs = [SAMPLES / "sample-with-problems.jsonl", SAMPLES / "sample-installations.jsonl"]
        result = await submit(settings, tmp_path, inputs, hooks=hooks)
    summary = read_summary(result.out_dir)
    # The run really had several outcomes and several answers to count.
    assert sum(1 for o in Outcome if summary[o.value]) >= 3, summary
    assert {"503", "no answer"} <= set(summary["requests_by_status"]), summary
    live = {label: metrics.records[label] for label in OUTCOME_LABELS}
    assert live == {label: summary.get(label, 0) for label in OUTCOME_LABELS}

    metrics.finish(summary)
    path = tmp_path / PROM
    metrics.write_textfile(path)
    text = path.read_text(encoding="utf-8")
    found = samples(text)
    assert_agrees(found, summary)
    last_success = one(found, "wem_der_last_success_timestamp_seconds")
    assert before <= last_success <= time.time()
    assert set(found) == {
        "wem_der_records_total",
        "wem_der_requests_total",
        "wem_der_quota_fullest_window",
        "wem_der_outage_seconds_total",
        "wem_der_in_flight",
        "wem_der_run_duration_seconds",
        "wem_der_last_success_timestamp_seconds",
    }
    labels = {name for series in found.values() for key in series for name, _ in key}
    assert labels == {"outcome", "status"}
    nmis = {line["nmi"] for lines in read_outcomes(result.out_dir).values() for line in lines}
    assert not [nmi for nmi in nmis if nmi and nmi in text]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(PROM)] == [PROM]

    # A finished run's summary alone gives the same counts.
    rebuilt = samples(text_from(RunMetrics.from_summary(summary), tmp_path))
    assert_agrees(rebuilt, summary)
    assert "wem_der_last_success_timestamp_seconds" not in rebuilt


def text_from(metrics: RunMetrics, tmp_path: Path) -> str:
    path = tmp_path / "rebuilt.prom"
    metrics.write_textfile(path)
    return path.read_text(encoding="utf-8")


def test_outages_add_up_and_an_open_one_lasts_to_the_end_of_the_run(tmp_path: Path) -> None:
    """Two outages in summary.json: 90 s, and one still open when the run ended 40 s later."""
    summary = {
        "records": 0,
        "requests_by_status": {"503": 7},
        "max_requests_in_window": 3,
        "started_at": "2027-01-15T02:00:00+00:00",
        "elapsed_s": 600.0,
        "outages": [
            {"start": "2027-01-15T02:01:00+00:00", "end": "2027-01-15T02:02:30Z", "probes": 4},
            {"start": "2027-01-15T02:09:20+00:00", "end": None, "probes": 2},
        ],
    }
    found = samples(text_from(RunMetrics.from_summary(summary), tmp_path))
    assert one(found, "wem_der_outage_seconds_total") == 90 + 40
    assert by_label(found, "wem_der_requests_total", "status") == {"503": 7}


def test_the_hooks_count_outcomes_and_time_the_run(tmp_path: Path) -> None:
    """A record left for resume counts as not_sent, not failed; the last success is the wall
    time of the last accepted or conditional record; the duration runs on the run's clock
    until `finish` sets the summary's."""
    now = {"run": 100.0, "wall": 1_800_000_000.0}
    metrics = RunMetrics(clock=lambda: now["run"], wall_clock=lambda: now["wall"])
    source = SourceRef("nightly.jsonl", line=1)
    inst = RecordKind.INSTALLATION
    metrics.on_outcome(OutcomeRecord(inst, "8001000001", source, Outcome.ACCEPTED))
    now |= {"run": 130.0, "wall": 1_800_000_030.0}
    for final in (False, True):
        metrics.on_outcome(OutcomeRecord(inst, "8001000002", source, Outcome.FAILED), final=final)
    found = samples(text_from(metrics, tmp_path))
    records = by_label(found, "wem_der_records_total", "outcome")
    assert (records["accepted"], records["failed"], records["not_sent"]) == (1, 1, 1)
    assert one(found, "wem_der_last_success_timestamp_seconds") == 1_800_000_000.0
    assert one(found, "wem_der_run_duration_seconds") == 30.0


async def test_the_periodic_writer_rewrites_the_file_until_cancelled(tmp_path: Path) -> None:
    """Each tick refreshes the gauges and replaces the file whole; a write that fails is
    logged and the writer goes on; cancelling it stops it."""
    metrics = RunMetrics()
    path = tmp_path / PROM
    ticks: asyncio.Queue[float] = asyncio.Queue()
    go_on = asyncio.Queue[None]()
    granted = iter(range(10, 100, 10))

    async def sleep(seconds: float) -> None:
        await ticks.put(seconds)
        await go_on.get()

    def refresh(m: RunMetrics) -> None:
        m.set_fullest_window(next(granted))

    async with asyncio.timeout(10):
        writer = asyncio.create_task(
            metrics.publish_every(path, None, "nightly", refresh=refresh, every_s=3.0, sleep=sleep)
        )
        assert await ticks.get() == 3.0
        first = samples(path.read_text(encoding="utf-8"))
        assert one(first, "wem_der_quota_fullest_window") == 10
        assert "wem_der_requests_total" not in first

        metrics.on_answer(200)
        metrics.on_answer(None)
        metrics.set_in_flight(4)
        go_on.put_nowait(None)
        assert await ticks.get() == 3.0
        second = samples(path.read_text(encoding="utf-8"))
        assert one(second, "wem_der_quota_fullest_window") == 20
        assert by_label(second, "wem_der_requests_total", "status") == {
            "200": 1,
            "no answer": 1,
        }
        assert one(second, "wem_der_in_flight") == 4

        # A directory took the file's name: the write fails, is logged, and the writer goes
        # on, leaving no temporary file behind; once the name is free, it writes again.
        path.unlink()
        path.mkdir()
        with capture_logs() as logs:
            go_on.put_nowait(None)
            assert await ticks.get() == 3.0
        assert [entry["event"] for entry in logs] == ["metrics.publish_failed"]
        assert str(path) in logs[0]["error"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [PROM]
        path.rmdir()
        go_on.put_nowait(None)
        assert await ticks.get() == 3.0
        assert one(samples(path.read_text(encoding="utf-8")), "wem_der_quota_fullest_window") == 40

        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
    assert ticks.empty()


async def test_a_push_reaches_the_pushgateway_as_prometheus_text(server: Scripted) -> None:
    """PUT /metrics/job/JOB with the same text as the file; the job is in the path, not in
    a label of each series."""
    metrics = RunMetrics()
    metrics.on_answer(201)
    metrics.set_in_flight(2)
    async with asyncio.timeout(10):
        await metrics.push(server.url, "wem-der-nightly")
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("PUT", "/metrics/job/wem-der-nightly")
    assert seen.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(seen.decoded().decode("utf-8"))
    assert by_label(found, "wem_der_requests_total", "status") == {"201": 1}
    assert one(found, "wem_der_in_flight") == 2
    assert by_label(found, "wem_der_records_total", "outcome") == dict.fromkeys(OUTCOME_LABELS, 0)


async def test_a_cancelled_push_ends_only_once_it_has_landed(server: Scripted) -> None:
    """Cancelling a push on its way waits for it: a run's periodic push cancelled at its
    end cannot land after the final push and put older values back."""
    held = asyncio.Event()
    server.script(Reply(hold=held))
    async with asyncio.timeout(10):
        pushing = asyncio.create_task(RunMetrics().push(server.url, "nightly"))
        await server.wait_seen(1)
        pushing.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        assert not pushing.done()
        held.set()
        with pytest.raises(asyncio.CancelledError):
            await pushing
    assert len(server.seen) == 1


async def test_a_push_that_fails_says_where_without_credentials(server: Scripted) -> None:
    """A Pushgateway that answers 500 is an OutputError naming its host, port and answer; a
    URL with a user and password (which the push cannot use) never shows the password."""
    server.script(Reply(status=500, body=b"storage full"))
    host = server.url.removeprefix("http://")
    async with asyncio.timeout(10):
        with pytest.raises(OutputError, match="Pushgateway") as refused:
            await RunMetrics().push(server.url, "nightly")
        with pytest.raises(OutputError, match="Pushgateway") as unusable:
            await RunMetrics().push(f"http://metrics-user:hunter2-secret@{host}", "nightly")
    assert f"at {host} (HTTPError: HTTP Error 500" in str(refused.value)
    assert f"at {host} (" in str(unusable.value)
    assert "hunter2" not in str(unusable.value)
    assert len(server.seen) == 1


async def test_a_run_publishes_to_its_file_and_pushgateway_and_ends_with_its_summary(
    tmp_path: Path, server: Scripted
) -> None:
    """metrics_file and metrics_push: the run publishes while it goes (to the job named
    metrics_job) and, last, the summary's counts to both."""
    prom = tmp_path / PROM
    faults = FaultProfile(error_rate_503=0.1, drop_rate=0.05)
    async with asyncio.timeout(60), Simulator(sim_settings(faults=faults, seed=3)) as sim:
        settings = run_settings(
            sim, tmp_path, metrics_file=prom, metrics_push=server.url, metrics_job="nightly"
        )
        inputs = [SAMPLES / "sample-with-problems.jsonl", SAMPLES / "sample-installations.jsonl"]
        result = await submit(settings, tmp_path, inputs)
    summary = read_summary(result.out_dir)
    assert {"503", "no answer"} <= set(summary["requests_by_status"]), summary
    assert_agrees(samples(prom.read_text(encoding="utf-8")), summary)
    # One push when the run starts, one at its end at least; the last is the summary's.
    assert len(server.seen) >= 2
    assert {(seen.method, seen.path) for seen in server.seen} == {("PUT", "/metrics/job/nightly")}
    last = samples(server.seen[-1].decoded().decode("utf-8"))
    assert_agrees(last, summary)
    assert one(last, "wem_der_last_success_timestamp_seconds") > 0


def test_submit_writes_a_metrics_file_that_agrees_with_its_summary(
    register: Sim, tmp_path: Path
) -> None:
    """`submit --metrics-file`: the file left at the end holds summary.json's counts."""
    prom = tmp_path / PROM
    out = tmp_path / "out"
    inputs = SAMPLES / "sample-installations.jsonl"
    state = tmp_path / "state"
    done = wem_der(
        "submit",
        str(inputs),
        "--out",
        str(out),
        "--metrics-file",
        str(prom),
        *register.flags(state),
    )
    assert done.code == 0, done.output
    summary = read_summary(out)
    assert summary["accepted"] > 0
    assert_agrees(samples(prom.read_text(encoding="utf-8")), summary)


def test_a_pushgateway_url_with_credentials_is_refused(register: Sim, tmp_path: Path) -> None:
    """--metrics-push with user:password@ is refused before the run starts (it would be
    recorded in run.json), and the message names the option, never the password."""
    done = wem_der(
        "submit",
        str(SAMPLES / "sample-installations.jsonl"),
        "--out",
        str(tmp_path / "out"),
        "--metrics-push",
        "http://metrics:hunter2-secret@127.0.0.1:9091",
        *register.flags(tmp_path / "state"),
    )
    assert done.code == 2, done.output
    assert "--metrics-push" in done.stderr
    assert "a Pushgateway that asks for credentials is not supported" in done.stderr
    assert "hunter2" not in done.output
    assert not (tmp_path / "out").exists()
