"""submit, end to end: outages and lost answers survived with nothing lost; a misconfigured
client stops the run instead of burning the batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from wem_der.errors import Misconfigured
from wem_der.simulator import FaultProfile, Simulator
from wem_der.testing import VirtualClock

from tests.e2e import (
    TOKEN_BODY,
    Tap,
    assert_each_once,
    lines_of,
    read_summary,
    records,
    run_settings,
    scripted_settings,
    sim_settings,
    submit,
    write_jsonl,
)
from tests.scripted import Reply, serve


async def test_an_outage_is_survived_with_nothing_lost(tmp_path: Path, tap: Tap) -> None:
    """Every request answered 503 from 1 s to 3 s: records back off, then all land, once."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(40))
        clock = VirtualClock()
        faults = FaultProfile(outages=((1.0, 3.0),))
        # The register's quota stays at its default: the quota is not the question here.
        sim_cfg = sim_settings(faults=faults)
        async with Simulator(
            sim_cfg, clock=clock, sleep=clock.sleep, middlewares=[tap.middleware]
        ) as sim:
            # Production-like backoff (in virtual seconds): a 2 s outage is well inside
            # 20 attempts of up to 2 s each. The quota spreads the run over 4 s.
            settings = run_settings(
                sim,
                tmp_path,
                rate_limit="10/1s",
                max_attempts=20,
                base_delay_s=0.5,
                max_delay_s=2.0,
            )
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            stats = sim.stats()
            started = sim.state.started_at
        found = assert_each_once(result.out_dir, lines_of(path, 40))
        assert len(found["accepted"]) == 40
        outage = [e for e in tap.exchanges if e.status == 503]
        assert outage, "the run did not meet the outage"
        assert all(1.0 <= e.at - started < 3.0 for e in outage)
        assert any(e.at - started >= 3.0 for e in tap.exchanges), "the run ended in the outage"
        # Nothing stored twice, nothing missing.
        assert (stats["installations"], stats["installation_versions"]) == (40, 40)
        assert stats["duplicate_creates"] == stats["creates_refused_existing"] == 0
        summary = read_summary(result.out_dir)
        assert summary["requests"] == stats["der_requests_received"] == 40 + len(outage)
        retried = {e.nmi for e in outage}
        for line in found["accepted"]:
            assert (line["attempts"] > 1) == (line["nmi"] in retried)


async def test_lost_answers_are_reconciled_without_duplicates(tmp_path: Path, tap: Tap) -> None:
    """Dropped connections, some after the write landed: read back, never created twice."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(40))
        faults = FaultProfile(drop_rate=0.15, applied_then_dropped_rate=0.15)
        sim_cfg = sim_settings(faults=faults, seed=3)
        async with Simulator(sim_cfg, middlewares=[tap.middleware]) as sim:
            result = await submit(run_settings(sim, tmp_path), tmp_path, [path])
            stats = sim.stats()
        found = assert_each_once(result.out_dir, lines_of(path, 40))
        assert len(found["accepted"]) == 40
        assert stats["applied_then_dropped"] > 0
        assert stats["dropped"] > 0
        assert (stats["installations"], stats["installation_versions"]) == (40, 40)
        assert stats["duplicate_creates"] == stats["creates_refused_existing"] == 0
        reads = [e for e in tap.exchanges if e.method == "GET"]
        summary = read_summary(result.out_dir)
        assert summary["reconciliations"] == len(reads) > 0
        confirmed = [line for line in found["accepted"] if line["reason"]]
        assert confirmed
        for line in confirmed:
            assert "confirmed by reading it back" in line["reason"]
            # The transaction id is that of the read that confirmed it.
            [read] = [e for e in reads if e.nmi == line["nmi"] and e.status == 200]
            assert line["transaction_id"] == read.transaction_id


@pytest.mark.parametrize("action", ["upsert", "update"])
async def test_a_wrong_base_url_stops_the_run(tmp_path: Path, tap: Tap, action: str) -> None:
    """A wrong base URL: the first 404s stop the run; nothing else is sent; exit code 3.
    An update's 404 too: it is not the register's "ID not found", so no record is blamed."""
    async with asyncio.timeout(10):
        path = write_jsonl(tmp_path / "in.jsonl", records(30))
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            settings = run_settings(
                sim, tmp_path, base_url=sim.installation_url + "/v9", action=action
            )
            result = await submit(settings, tmp_path, [path])
        assert isinstance(result.aborted, Misconfigured)
        assert result.exit_code == 3
        # At most the requests already on the wire when the first 404 came back.
        assert 1 <= len(tap.exchanges) <= 4  # run_settings' concurrency
        assert {e.status for e in tap.exchanges} == {404}
        found = assert_each_once(result.out_dir, lines_of(path, 30))
        assert len(found["failed"]) == 30
        # Those whose request earned a 404 say so; the rest were never sent.
        answered = [line for line in found["failed"] if line["http_status"] == 404]
        assert len(answered) == len(tap.exchanges)
        for line in answered:
            assert line["reason"].startswith("its answer stopped the run: 404 (Not found")
            assert line["attempts"] == 1
            assert line["transaction_id"]  # the simulator's 404 carries one, kept for AEMO
        for line in found["failed"]:
            if line not in answered:
                assert line["reason"].startswith("not sent")
        summary = read_summary(result.out_dir)
        assert summary["status"] == "aborted"
        verb = "create" if action == "upsert" else "update"
        reason = summary["abort_reason"]
        assert "404 (Not found: Resource not found: /v2/der-register/v9/installation" in reason
        assert f"on {verb} at " in reason
        assert "--base-url" in reason
        assert summary["not_sent"] == 30


async def test_a_stop_does_not_wait_for_the_quota(tmp_path: Path, tap: Tap) -> None:
    """An abort while workers wait a minute for the quota: they give up at once, unsent."""
    async with asyncio.timeout(10):
        path = write_jsonl(tmp_path / "in.jsonl", records(10))
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            # No ceiling: both requests of the window may leave together (a few ms apart),
            # which the default ceiling (1 a second at a quota this low) would spread over
            # two seconds.
            settings = run_settings(
                sim,
                tmp_path,
                base_url=sim.installation_url + "/v9",
                rate_limit="2/60s",
                burst="off",
            )
            result = await submit(settings, tmp_path, [path])
        assert result.exit_code == 3
        # The window's second request leaves a few ms after the first (the quota's
        # spacing of a job's requests), unless the first's answer has stopped the run.
        assert 1 <= len(tap.exchanges) <= 2
        found = assert_each_once(result.out_dir, lines_of(path, 10))
        assert len(found["failed"]) == 10


@pytest.mark.parametrize("status", [405, 411, 415])
async def test_a_misconfigured_client_stops_the_run(tmp_path: Path, status: int) -> None:
    """405/411/415 after three accepted records: those stay recorded, the rest is not sent."""
    async with asyncio.timeout(10), serve() as server:
        server.script(Reply(200, TOKEN_BODY))
        for n in range(3):
            server.script(Reply(201, {"transactionId": f"txn-{n}", "data": {}}))
        error = {"code": str(status), "title": "Misconfigured", "detail": "scripted"}
        server.script(Reply(status, {"transactionId": "txn-bad", "errors": [error]}))
        path = write_jsonl(tmp_path / "in.jsonl", records(10))
        result = await submit(scripted_settings(server.url, tmp_path), tmp_path, [path])
        assert isinstance(result.aborted, Misconfigured)
        assert result.exit_code == 3
        assert [s.path for s in server.seen] == ["/oauth/token"] + ["/der/installation"] * 4
        found = assert_each_once(result.out_dir, lines_of(path, 10))
        accepted = sorted(found["accepted"], key=lambda line: line["source"]["line"])
        assert [line["transaction_id"] for line in accepted] == ["txn-0", "txn-1", "txn-2"]
        assert [line["source"]["line"] for line in accepted] == [1, 2, 3]
        assert len(found["failed"]) == 7
        [answered] = [line for line in found["failed"] if line["http_status"] is not None]
        assert (answered["source"]["line"], answered["http_status"]) == (4, status)
        assert answered["transaction_id"] == "txn-bad"
        assert answered["reason"].startswith(f"its answer stopped the run: HTTP {status}")
        unsent = [line for line in found["failed"] if line is not answered]
        assert all(line["reason"].startswith("not sent") for line in unsent)
        summary = read_summary(result.out_dir)
        # Left for `resume`, the answered one included: it reads that one back first.
        assert (summary["status"], summary["accepted"], summary["not_sent"]) == ("aborted", 3, 7)
        assert summary["records"] == 10
        assert f"HTTP {status}" in summary["abort_reason"]


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (Reply(200, body=b"<html>Welcome to the portal</html>"), "'<html>Welcome to the portal"),
        (Reply(201, body=b""), "no JSON object"),
        (Reply(200, json=[]), "no JSON object"),
    ],
)
async def test_a_success_that_is_not_the_registers_answer_stops_the_run(
    tmp_path: Path, reply: Reply, said: str
) -> None:
    """A 2xx that is no JSON object (a portal's page, nothing) is not taken for accepted: the
    run stops, and the next run sends that record again instead of skipping it."""
    async with asyncio.timeout(10), serve() as server:
        server.script(Reply(200, TOKEN_BODY))
        for n in range(2):
            server.script(Reply(201, {"transactionId": f"txn-{n}", "data": {}}))
        server.script(reply)
        path = write_jsonl(tmp_path / "in.jsonl", records(5))
        settings = scripted_settings(server.url, tmp_path)
        result = await submit(settings, tmp_path, [path])
        assert isinstance(result.aborted, Misconfigured)
        assert result.exit_code == 3
        found = assert_each_once(result.out_dir, lines_of(path, 5))
        assert [line["source"]["line"] for line in found["accepted"]] == [1, 2]
        assert len(found["failed"]) == 3
        [third] = [line for line in found["failed"] if line["source"]["line"] == 3]
        assert third["http_status"] == reply.status
        assert third["reason"].startswith(f"its answer stopped the run: HTTP {reply.status} with")
        summary = read_summary(result.out_dir)
        assert said in summary["abort_reason"]
        assert "not the register's answer, so not counted as accepted" in summary["abort_reason"]

        # Nothing recorded the third record as accepted: the next run sends it, not skips it.
        server.script(Reply(200, TOKEN_BODY))
        for n in range(2, 5):
            server.script(Reply(201, {"transactionId": f"txn-{n}", "data": {}}))
        again = await submit(settings, tmp_path, [path], out="again")
        found = assert_each_once(again.out_dir, lines_of(path, 5))
        assert [line["source"]["line"] for line in found["skipped"]] == [1, 2]
        assert sorted(line["source"]["line"] for line in found["accepted"]) == [3, 4, 5]


async def test_a_retried_503_does_not_break_a_run_of_403s(tmp_path: Path) -> None:
    """403, then 503 and 403 on the next record, then 403: three records refused in a row
    stop the run; the 503 between them says nothing about entitlement."""
    forbidden = Reply(
        403, {"transactionId": "t", "errors": [{"code": "403", "title": "Forbidden"}]}
    )
    async with asyncio.timeout(10), serve() as server:
        server.script(Reply(200, TOKEN_BODY), forbidden, Reply(503, body=b""), forbidden, forbidden)
        path = write_jsonl(tmp_path / "in.jsonl", records(5))
        result = await submit(scripted_settings(server.url, tmp_path), tmp_path, [path])
        assert isinstance(result.aborted, Misconfigured)
        assert "403 Forbidden on 3 records in a row" in str(result.aborted)
        assert [s.path for s in server.seen] == ["/oauth/token"] + ["/der/installation"] * 4
        found = assert_each_once(result.out_dir, lines_of(path, 5))
        assert [line["source"]["line"] for line in found["rejected"]] == [1, 2]


async def test_403_across_records_stops_the_run(tmp_path: Path, tap: Tap) -> None:
    """A participant not entitled: two records rejected 403, the third stops the run."""
    async with asyncio.timeout(10):
        path = write_jsonl(tmp_path / "in.jsonl", records(10))
        cfg = sim_settings(allowed_participants=frozenset({"SOMEONE-ELSE"}))
        async with Simulator(cfg, middlewares=[tap.middleware]) as sim:
            result = await submit(run_settings(sim, tmp_path, concurrency=1), tmp_path, [path])
        assert isinstance(result.aborted, Misconfigured)
        assert result.exit_code == 3
        assert [e.status for e in tap.exchanges] == [403, 403, 403]
        found = assert_each_once(result.out_dir, lines_of(path, 10))
        assert [line["http_status"] for line in found["rejected"]] == [403, 403]
        assert len(found["failed"]) == 8
        [third] = [line for line in found["failed"] if line["http_status"] == 403]
        assert third["reason"].startswith("its answer stopped the run: 403 Forbidden on 3")
        summary = read_summary(result.out_dir)
        assert "403 Forbidden on 3 records in a row" in summary["abort_reason"]
        assert (summary["rejected"], summary["not_sent"], summary["requests"]) == (2, 8, 3)
