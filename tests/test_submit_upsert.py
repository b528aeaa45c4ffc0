"""submit, end to end: upsert chooses create or update with one request where one will do,
and records of one NMI go in input order, never two at once."""

from __future__ import annotations

import asyncio
import copy
import itertools
from pathlib import Path
from typing import Any

from wem_der.records.samples import nmi_record
from wem_der.records.shapes import RecordKind
from wem_der.run.wiring import Hooks, execute
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


def _changed(recs: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    out = copy.deepcopy(recs)
    for rec in out:
        rec["jobNumber"] = f"{rec['jobNumber']}-{tag}"
    return out


def _two_versions(tmp_path: Path, count: int) -> tuple[list[dict[str, Any]], Path, Path]:
    """`count` records, and the files of their first and a changed second version."""
    recs = records(count)
    first = write_jsonl(tmp_path / "v1.jsonl", recs)
    second = write_jsonl(tmp_path / "v2.jsonl", _changed(recs, "v2"))
    return recs, first, second


async def test_new_nmis_are_created_then_known_ones_updated(tmp_path: Path, tap: Tap) -> None:
    """Run 1 creates; run 2 (same ledger, changed records) updates with one PUT each."""
    async with asyncio.timeout(30):
        recs, first, second = _two_versions(tmp_path, 6)
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            settings = run_settings(sim, tmp_path)
            one = await submit(settings, tmp_path, [first], out="one")
            created = [(e.method, e.status) for e in tap.writes()]
            tap.exchanges.clear()
            two = await submit(settings, tmp_path, [second], out="two")
            stored = {r["nmi"]: sim.store.installation(r["nmi"]) for r in recs}
        assert created == [("POST", 200)] * 6
        assert [(e.method, e.status) for e in tap.exchanges] == [("PUT", 200)] * 6
        found = assert_each_once(two.out_dir, lines_of(second, 6))
        assert {(line["action"], line["attempts"]) for line in found["accepted"]} == {("update", 1)}
        created_lines = assert_each_once(one.out_dir, lines_of(first, 6))["accepted"]
        assert {line["action"] for line in created_lines} == {"create"}
        for nmi, version in stored.items():
            assert version is not None
            assert version.record["jobNumber"].endswith("-v2"), nmi


async def test_unchanged_records_are_skipped_without_a_request(tmp_path: Path, tap: Tap) -> None:
    """Sending the same file again costs nothing: each record is skipped, pointing back."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(4))
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            settings = run_settings(sim, tmp_path)
            one = await submit(settings, tmp_path, [path], out="one")
            before = len(tap.exchanges)
            two = await submit(settings, tmp_path, [path], out="two")
        assert before == 4
        assert len(tap.exchanges) == 4
        found = assert_each_once(two.out_dir, lines_of(path, 4))
        assert len(found["skipped"]) == 4
        first = assert_each_once(one.out_dir, lines_of(path, 4))["accepted"]
        txn = {line["nmi"]: line["transaction_id"] for line in first}
        for line in found["skipped"]:
            assert line["previous_run_id"] == one.run_id
            assert line["previous_transaction_id"] == txn[line["nmi"]]
        assert two.exit_code == 0
        assert read_summary(two.out_dir)["requests"] == 0


async def test_update_answered_404_becomes_a_create(tmp_path: Path, tap: Tap) -> None:
    """The ledger believes an NMI exists, the register does not: PUT 404, then POST."""
    async with asyncio.timeout(30):
        recs, first, second = _two_versions(tmp_path, 3)
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            await submit(run_settings(sim, tmp_path), tmp_path, [first], out="one")
        tap.exchanges.clear()
        # A fresh register (say, pre-production was reset) with the same ledger.
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            result = await submit(run_settings(sim, tmp_path), tmp_path, [second], out="two")
            held = sim.stats()["installations"]
        for rec in recs:
            assert [(e.method, e.status) for e in tap.for_nmi(rec["nmi"])] == [
                ("PUT", 404),
                ("POST", 200),
            ]
        found = assert_each_once(result.out_dir, lines_of(second, 3))
        assert {(line["action"], line["attempts"]) for line in found["accepted"]} == {("create", 2)}
        assert held == 3


async def test_create_refused_as_existing_becomes_an_update(tmp_path: Path, tap: Tap) -> None:
    """The register has the NMI, this ledger does not: POST 422 "already exists", then PUT."""
    async with asyncio.timeout(30):
        recs, first, second = _two_versions(tmp_path, 3)
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            # Someone else (another state directory) created them.
            other = run_settings(sim, tmp_path, state_dir=tmp_path / "elsewhere")
            await submit(other, tmp_path, [first], out="one")
            tap.exchanges.clear()
            result = await submit(run_settings(sim, tmp_path), tmp_path, [second], out="two")
            stats = sim.stats()
            history = {r["nmi"]: sim.store.history(r["nmi"]) for r in recs}
        for rec in recs:
            assert [(e.method, e.status) for e in tap.for_nmi(rec["nmi"])] == [
                ("POST", 422),
                ("PUT", 200),
            ]
            assert [v.record["jobNumber"] for v in history[rec["nmi"]]] == [
                rec["jobNumber"],
                rec["jobNumber"] + "-v2",
            ]
        assert stats["creates_refused_existing"] == 3
        assert stats["duplicate_creates"] == 0
        found = assert_each_once(result.out_dir, lines_of(second, 3))
        assert {(line["action"], line["attempts"]) for line in found["accepted"]} == {("update", 2)}


async def test_action_create_is_not_turned_into_an_update(tmp_path: Path, tap: Tap) -> None:
    """With --action create an existing NMI is rejected as such, and nothing else is sent."""
    async with asyncio.timeout(30):
        _, first, second = _two_versions(tmp_path, 2)
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            await submit(run_settings(sim, tmp_path), tmp_path, [first], out="one")
            tap.exchanges.clear()
            settings = run_settings(sim, tmp_path, action="create")
            result = await submit(settings, tmp_path, [second], out="two")
        assert [(e.method, e.status) for e in tap.exchanges] == [("POST", 422)] * 2
        found = assert_each_once(result.out_dir, lines_of(second, 2))
        assert len(found["rejected"]) == 2
        for line in found["rejected"]:
            assert line["action"] == "create"
            assert [e["code"] for e in line["errors"]] == ["1001"]


async def test_action_update_is_not_turned_into_a_create(tmp_path: Path, tap: Tap) -> None:
    """With --action update an unknown NMI is rejected after its one PUT."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(2))
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            settings = run_settings(sim, tmp_path, action="update")
            result = await submit(settings, tmp_path, [path])
            held = sim.stats()["installations"]
        assert [(e.method, e.status) for e in tap.exchanges] == [("PUT", 404)] * 2
        found = assert_each_once(result.out_dir, lines_of(path, 2))
        assert len(found["rejected"]) == 2
        for line in found["rejected"]:
            assert (line["action"], line["http_status"]) == ("update", 404)
            assert line["reason"] == "the register has no record for this NMI"
        assert held == 0


async def test_versions_of_one_nmi_go_in_input_order_one_at_a_time(
    tmp_path: Path, tap: Tap
) -> None:
    """Three versions of each of two NMIs among others: sent in order, never overlapping."""
    async with asyncio.timeout(30):
        others = records(18, start=100)
        twice = records(2)
        items: list[dict[str, Any]] = []
        for version in range(3):
            for rec in _changed(twice, f"v{version}"):
                items.append(rec)
            items.extend(others[version * 6 : version * 6 + 6])
        path = write_jsonl(tmp_path / "in.jsonl", items)
        faults = FaultProfile(latency_ms=1, jitter_ms=30)
        # Latency on a virtual clock: answers leave in the order of their drawn delays, so
        # concurrent requests interleave inside the server as they would over a network.
        clock = VirtualClock()
        sim_cfg = sim_settings(faults=faults)
        async with Simulator(
            sim_cfg, clock=clock, sleep=clock.sleep, middlewares=[tap.middleware]
        ) as sim:
            settings = run_settings(sim, tmp_path, concurrency=8)
            # The client on the same clock: its requests, a few ms apart (the quota's
            # spacing), meet answers that take up to 31 ms.
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            history = {r["nmi"]: sim.store.history(r["nmi"]) for r in twice}
            current = {r["nmi"]: sim.store.installation(r["nmi"]) for r in twice}
        found = assert_each_once(result.out_dir, lines_of(path, len(items)))
        assert len(found["accepted"]) == len(items)
        # Other records did overlap each other: the server did see concurrent requests.
        spans = sorted((e.at, e.done) for e in tap.exchanges)
        assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
        for rec in twice:
            nmi = rec["nmi"]
            sent = tap.for_nmi(nmi)
            # One request per version (create, then updates learnt in this run): no 404s,
            # no refused creates.
            assert [(e.method, e.status) for e in sent] == [
                ("POST", 200),
                ("PUT", 200),
                ("PUT", 200),
            ]
            for earlier, later in itertools.pairwise(sent):
                assert earlier.done <= later.at, "two versions of one NMI were in flight at once"
            jobs = [v.record["jobNumber"] for v in history[nmi]]
            assert jobs == [f"{rec['jobNumber']}-v{k}" for k in range(3)]
            stored = current[nmi]
            assert stored is not None
            assert stored.record["jobNumber"].endswith("-v2")
            lines = sorted(
                (line for line in found["accepted"] if line["nmi"] == nmi),
                key=lambda line: line["source"]["line"],
            )
            assert [line["action"] for line in lines] == ["create", "update", "update"]
        assert read_summary(result.out_dir)["requests"] == len(items)


async def test_nmi_records_upsert_through_the_nmi_api(tmp_path: Path, tap: Tap) -> None:
    """--kind nmi: bare bodies to /nmi-details, created, then updated on the next run."""
    async with asyncio.timeout(30):
        recs = [nmi_record(i) for i in range(3)]
        first = write_jsonl(tmp_path / "v1.jsonl", recs)
        changed = [dict(r, substation="SUB-PERTH-02") for r in recs]
        second = write_jsonl(tmp_path / "v2.jsonl", changed)
        async with Simulator(sim_settings(), middlewares=[tap.middleware]) as sim:
            settings = run_settings(sim, tmp_path)
            for path, out in ((first, "one"), (second, "two")):
                plan = make_plan(tmp_path, [path], out=out, kind=RecordKind.NMI)
                result = await execute(settings, plan, hooks=Hooks())
            stored = {r["nmi"]: sim.store.nmi(r["nmi"]) for r in recs}
        found = assert_each_once(result.out_dir, lines_of(second, 3))
        assert {(line["kind"], line["action"]) for line in found["accepted"]} == {("nmi", "update")}
        prefix = "/wem/v1/der-register/nmi-details"
        assert sorted((e.method, e.path) for e in tap.exchanges) == sorted(
            [("POST", prefix)] * 3 + [("PUT", f"{prefix}/{r['nmi']}") for r in recs]
        )
        for exchange in tap.writes():
            assert "data" not in exchange.decoded()  # NMI v1 bodies are not wrapped [spec]
        for nmi, record in stored.items():
            assert record is not None
            assert record["substation"] == "SUB-PERTH-02", nmi
