"""submit, end to end, through the register's outages: the run pauses instead of failing its
records, probes the register a request at a time, goes on at the quota once it answers,
and stops resumably when an outage outlasts --max-outage."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from wem_der.errors import RunAborted
from wem_der.ledger.store import Ledger
from wem_der.records.shapes import RecordKind
from wem_der.report.collect import render
from wem_der.run.start import LEDGER_FILE
from wem_der.run.wiring import Hooks, execute
from wem_der.send.breaker import RegisterDown
from wem_der.simulator import FaultProfile, Simulator
from wem_der.testing import VirtualClock

from tests.e2e import (
    Tap,
    assert_each_once,
    lines_of,
    make_plan,
    read_summary,
    records,
    run_settings,
    sim_settings,
    submit,
    write_jsonl,
)

# A record's own budget is far shorter than the outages here: 4 attempts, 0.5 s doubling.
SHORT_BUDGET: dict[str, Any] = {
    "rate_limit": "100/1s",
    "concurrency": None,
    "max_attempts": 4,
    "base_delay_s": 0.5,
    "max_delay_s": 30.0,
}


def register(faults: FaultProfile, clock: VirtualClock, tap: Tap, **overrides: Any) -> Simulator:
    """The register, with `faults`, on `clock`, every DER request seen by `tap`."""
    return Simulator(
        sim_settings(faults=faults, **overrides),
        clock=clock,
        sleep=clock.sleep,
        middlewares=[tap.middleware],
    )


def down_per_second(tap: Tap, start: float, end: float) -> Counter[int]:
    """Requests that reached the register in each second of [start, end) (simulator time)."""
    return Counter(int(e.at - start) for e in tap.exchanges if start <= e.at < end)


@pytest.mark.parametrize(
    ("faults", "seconds"),
    [
        (FaultProfile(outages=((5.0, 125.0),)), 120.0),
        (FaultProfile(dropped_outages=((5.0, 95.0),)), 90.0),
    ],
    ids=["503s for two minutes", "closed connections for 90 s"],
)
async def test_a_run_rides_out_an_outage_with_no_record_failed(
    tmp_path: Path, tap: Tap, faults: FaultProfile, seconds: float
) -> None:
    """1500 records at 100/1s, the register down in the middle: no record ends failed,
    each has one outcome, at most two requests a second reach the register once the run
    has seen it down, and the run finishes by itself."""
    async with asyncio.timeout(120):
        path = write_jsonl(tmp_path / "in.jsonl", records(1500))
        clock = VirtualClock()
        metrics = tmp_path / "wem-der.prom"
        async with register(faults, clock, tap, quota_count=100, quota_period_s=1.0) as sim:
            settings = run_settings(sim, tmp_path, metrics_file=metrics, **SHORT_BUDGET)
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            stats = sim.stats()
            began = sim.state.started_at
        found = assert_each_once(result.out_dir, lines_of(path, 1500))
        assert len(found["accepted"]) == 1500
        assert result.exit_code == 0
        assert stats["installations"] == 1500
        assert stats["http_429"] == 0
        assert stats["max_requests_in_window"] <= 100

        start, end = began + 5.0, began + 5.0 + seconds
        met = min(e.at for e in tap.exchanges if start <= e.at < end)
        per_second = down_per_second(tap, met, end)
        # The first two seconds the run meets the outage hold the failures that open the
        # breaker, one at a time after the first, and the first probe; after them only
        # the probes go, one at a time, at most two a second.
        assert 3 <= per_second[0] + per_second[1] <= 5, per_second
        assert max(n for s, n in per_second.items() if s >= 2) <= 2, per_second

        summary = read_summary(result.out_dir)
        assert summary["status"] == "finished"
        assert len(summary["outages"]) == 1
        outage = summary["outages"][0]
        assert "still_down" not in outage
        assert outage["probes"] >= 5
        assert "cause" not in outage  # the register had answered before it went down
        # The run went on within a probe's longest wait of the register's return.
        last_down = max(e.at for e in tap.exchanges if start <= e.at < end)
        assert any(e.at >= end for e in tap.exchanges)
        assert last_down >= end - 61.0
        # The metrics file agrees with the summary.
        text = metrics.read_text()
        assert 'wem_der_records_total{outcome="accepted"} 1500.0' in text
        assert (
            f'wem_der_requests_total{{status="200"}} {summary["requests_by_status"]["200"]}.0'
            in text
        )
        downtime = _metric(text, "wem_der_outage_seconds_total")
        # From the first second the run met it, to a probe's longest wait after its end.
        assert end - met - 1 <= downtime <= end - met + 61


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the metrics file")


async def test_retry_after_on_the_outage_spaces_the_probes(tmp_path: Path, tap: Tap) -> None:
    """An outage whose 503s say Retry-After: 20 is probed no more often than that."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(300))
        clock = VirtualClock()
        faults = FaultProfile(outages=((1.0, 121.0),), outage_retry_after_s=20.0)
        async with register(faults, clock, tap) as sim:
            settings = run_settings(sim, tmp_path, **SHORT_BUDGET)
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            began = sim.state.started_at
        assert len(assert_each_once(result.out_dir, lines_of(path, 300))["accepted"]) == 300
        down = sorted(e.at for e in tap.exchanges if began + 2.0 <= e.at < began + 121.0)
        # The first two failures held the run to one request at a time; from the third,
        # which opened the breaker, each next request waited for the Retry-After.
        probes = down[2:]
        gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
        assert len(probes) >= 3
        assert all(gap >= 20.0 - 1e-6 for gap in gaps), gaps
        assert read_summary(result.out_dir)["failed"] == 0


async def test_an_outage_longer_than_max_outage_stops_the_run_resumably(
    tmp_path: Path, tap: Tap
) -> None:
    """Down longer than --max-outage: exit 3, nothing failed, the records not sent left
    for `resume`, which finishes the run once the register is back."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(400))
        clock = VirtualClock()
        faults = FaultProfile(outages=((2.0, 600.0),))
        async with register(faults, clock, tap) as sim:
            settings = run_settings(sim, tmp_path, max_outage="2m", **SHORT_BUDGET)
            plan = make_plan(tmp_path, [path])
            result = await execute(settings, plan, hooks=Hooks(), clock=clock, sleep=clock.sleep)
            began = sim.state.started_at
            stopped_at = clock()

            assert isinstance(result.aborted, RegisterDown)
            assert isinstance(result.aborted, RunAborted)
            assert result.exit_code == 3
            summary = read_summary(result.out_dir)
            assert summary["status"] == "aborted"
            assert "--max-outage 2 min 00 s" in summary["abort_reason"]
            assert "wem-der resume" in summary["abort_reason"]
            assert summary["failed"] == 0
            assert summary["not_sent"] > 0
            assert summary["accepted"] + summary["not_sent"] == 400
            [outage] = summary["outages"]
            assert outage["still_down"] is True
            # Given up two minutes after the breaker opened, not at the outage's end.
            assert 120.0 <= stopped_at - (began + 2.0) <= 125.0
            async with Ledger(settings.state_dir / LEDGER_FILE) as ledger:
                report = await render(
                    ledger, run_id=plan.run_id, nmi=None, kind=RecordKind.INSTALLATION
                )
            assert "register outages:" in report
            assert outage["start"] in report
            assert "still down when the run stopped" in report

            # The register is back: resume finishes the run, each record once.
            clock.jump(600.0 - (clock() - began))
            again = await execute(
                settings, plan, hooks=Hooks(), resume=True, clock=clock, sleep=clock.sleep
            )
            held = sim.stats()["installations"]
        assert again.exit_code == 0
        # The whole run's outages: the first process's, then none for the resumed one.
        assert read_summary(again.out_dir)["outages"] == [outage]
        found = assert_each_once(again.out_dir, lines_of(path, 400))
        assert len(found["accepted"]) == 400
        assert held == 400


async def test_an_outage_during_a_plan_from_the_register_is_ridden_out(
    tmp_path: Path, tap: Tap
) -> None:
    """The register's bulk reads (--plan register) wait out an outage as the writes do."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(250))
        clock = VirtualClock()
        faults = FaultProfile(outages=((0.0, 90.0),))
        async with register(faults, clock, tap) as sim:
            settings = run_settings(sim, tmp_path, plan="register", **SHORT_BUDGET)
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            held = sim.stats()["installations"]
        found = assert_each_once(result.out_dir, lines_of(path, 250))
        assert len(found["accepted"]) == 250
        assert held == 250
        searches = [e for e in tap.exchanges if e.method == "GET" and e.status == 200]
        assert searches, "the register was not read"
        assert len(read_summary(result.out_dir)["outages"]) == 1


async def test_a_register_unreachable_from_the_start_is_diagnosed(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    """Nothing listens where the run sends: the breaker says what is likely wrong, and the
    run stops at --max-outage naming it."""
    async with asyncio.timeout(60):
        path = write_jsonl(tmp_path / "in.jsonl", records(20))
        clock = VirtualClock()
        async with Simulator(sim_settings(), clock=clock, sleep=clock.sleep) as sim:
            settings = run_settings(
                sim,
                tmp_path,
                base_url=f"http://127.0.0.1:{unused_tcp_port}/api",
                max_outage="10m",
                **SHORT_BUDGET,
            )
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
        assert result.exit_code == 3
        summary = read_summary(result.out_dir)
        [outage] = summary["outages"]
        cause = f"nothing accepted a connection to 127.0.0.1:{unused_tcp_port}"
        assert cause in outage["cause"]
        assert cause in summary["abort_reason"]
        assert summary["failed"] == 0
        assert summary["not_sent"] == 20
