"""submit, end to end: the quota holds at the server under retries and replays, and a 429
pauses every worker and lowers the rate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from wem_der.records.outcomes import OutcomeRecord
from wem_der.run.wiring import Hooks
from wem_der.send.quota import MAX_SPREAD_S
from wem_der.simulator import FaultProfile, Simulator
from wem_der.simulator.faults import Action, FaultInjector
from wem_der.testing import VirtualClock

from tests.e2e import (
    Tap,
    assert_each_once,
    lines_of,
    read_summary,
    records,
    run_settings,
    sim_settings,
    submit,
    write_jsonl,
)


def seed_throttling(rate: float, wanted: Callable[[list[int]], bool], draws: int) -> int:
    """A fault seed whose first `draws` requests are throttled at the indices `wanted` likes.

    The simulator draws once per DER request, in arrival order, from `random.Random(seed)`
    (FaultProfile's docstring), so the k-th request to arrive gets the k-th draw whichever
    record it carries.
    """
    for seed in range(100_000):
        injector = FaultInjector(FaultProfile(throttle_rate=rate), seed=seed, started_at=0.0)
        hits = [i for i in range(draws) if injector.decide(0.0).action is Action.THROTTLE]
        if wanted(hits):
            return seed
    raise AssertionError("no such seed")


async def test_the_quota_holds_under_retries_and_token_replays(tmp_path: Path) -> None:
    """40 per 10 s with 503s and a token revocation at 6 s: no window over 40, no 429, all
    accepted."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(45))
        # Simulator and run on one virtual clock: the revocation comes 6 s in, after the
        # first window's burst and before the second, and a request reaches the register at
        # the instant its grant was given, so the client's margin is the production default.
        clock = VirtualClock()
        faults = FaultProfile(error_rate_503=0.15, revoke_tokens_at_s=(6.0,))
        sim_cfg = sim_settings(faults=faults, quota_count=40, quota_period_s=10.0, seed=7)
        async with Simulator(sim_cfg, clock=clock, sleep=clock.sleep) as sim:
            settings = run_settings(sim, tmp_path, rate_limit="40/10s", concurrency=16)
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            stats = sim.stats()
        found = assert_each_once(result.out_dir, lines_of(path, 45))
        assert len(found["accepted"]) == 45
        created = stats["requests"]["installation.create"]
        # The load really was more than one window's worth, retries and replays included.
        assert created["503"] > 0
        assert created["401"] > 0
        assert stats["der_requests_received"] == 45 + created["503"] + created["401"]
        assert stats["max_requests_in_window"] <= 40
        assert stats["http_429"] == 0
        assert stats["quota_refused"] == 0
        summary = read_summary(result.out_dir)
        assert summary["max_requests_in_window"] <= 40
        assert summary["requests"] == stats["der_requests_received"]
        assert summary["http_429"] == 0
        # One revocation: one refresh beyond the first token, one replay per 401.
        assert summary["token_refreshes"] == stats["tokens_issued"] == 2
        assert summary["token_replays"] == created["401"]


async def test_a_429_pauses_every_worker(tmp_path: Path, tap: Tap) -> None:
    """After a 429 with Retry-After: 1, no new request starts for a second, on any worker."""
    async with asyncio.timeout(30):
        concurrency = 6
        path = write_jsonl(tmp_path / "in.jsonl", records(40))
        seed = seed_throttling(0.03, lambda hits: len(hits) == 1 and 2 <= hits[0] <= 8, 60)
        faults = FaultProfile(throttle_rate=0.03, retry_after="seconds", retry_after_s=1)
        clock = VirtualClock()
        sim_cfg = sim_settings(faults=faults, seed=seed)
        async with Simulator(
            sim_cfg, clock=clock, sleep=clock.sleep, middlewares=[tap.middleware]
        ) as sim:
            settings = run_settings(sim, tmp_path, concurrency=concurrency)
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            stats = sim.stats()
        found = assert_each_once(result.out_dir, lines_of(path, 40))
        assert len(found["accepted"]) == 40
        assert stats["http_429"] == 1 == read_summary(result.out_dir)["http_429"]
        [throttled] = [e for e in tap.exchanges if e.status == 429]
        assert throttled.headers.get("Content-Encoding") == "gzip"
        t0 = throttled.at
        during = [e for e in tap.exchanges if t0 < e.at < t0 + 1.0]
        after = [e for e in tap.exchanges if e.at >= t0 + 1.0]
        # Only requests already granted when the 429 came back may land in the pause;
        # without a shared pause the other workers would send the rest of the file in it.
        assert len(during) <= concurrency - 1
        assert len(after) >= 40 - concurrency - 8
        retried = [e for e in tap.exchanges if e.nmi == throttled.nmi]
        assert [e.status for e in retried] == [429, 200]
        assert retried[1].at >= t0 + 1.0


async def test_a_429_lowers_the_rate(tmp_path: Path, tap: Tap) -> None:
    """After a 429 the quota restarts at 7 of 10: the pause ends with 4 more, not 7 more."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(12))
        seed = seed_throttling(0.05, lambda hits: hits == [0], 40)
        faults = FaultProfile(throttle_rate=0.05, retry_after="seconds", retry_after_s=1)
        clock = VirtualClock()
        finished = 0

        def on_outcome(outcome: OutcomeRecord) -> None:
            # What the pause released is done (2 answered before it, 4 after): the rest
            # would wait 20 s for the limit to rise, and is not the question. Stop.
            nonlocal finished
            finished += 1
            if finished == 6:
                hooks.stop.set()

        hooks = Hooks(on_outcome=on_outcome)
        sim_cfg = sim_settings(faults=faults, seed=seed)
        async with Simulator(
            sim_cfg, clock=clock, sleep=clock.sleep, middlewares=[tap.middleware]
        ) as sim:
            # 10 per 60 s: after the 429 the limit drops to 7 and gains one every 20 s.
            settings = run_settings(sim, tmp_path, concurrency=3, rate_limit="10/60s")
            result = await submit(
                settings, tmp_path, [path], hooks=hooks, clock=clock, sleep=clock.sleep
            )
        first = tap.exchanges[0]
        assert first.status == 429
        # 3 sent before the 429 came back, 4 more when the pause ended: 7 in the window.
        # Had the limit stayed at 10, the pause would have released 7.
        assert len(tap.exchanges) == 7
        assert all(e.at < first.at + 15.0 for e in tap.exchanges)
        # In the pause, only the two requests already on the wire when the 429 came back.
        assert len([e for e in tap.exchanges if first.at < e.at < first.at + 1.0]) <= 2
        found = assert_each_once(result.out_dir, lines_of(path, 12))
        assert len(found["accepted"]) == 6
        assert all(line["reason"].startswith("not sent") for line in found["failed"])


async def test_a_stop_during_a_long_retry_after_ends_the_run_at_once(
    tmp_path: Path, tap: Tap
) -> None:
    """Ctrl-C while every worker waits out a 300 s Retry-After: nothing more is sent."""
    async with asyncio.timeout(10):
        path = write_jsonl(tmp_path / "in.jsonl", records(10))
        seed = seed_throttling(0.05, lambda hits: hits == [0], 40)
        faults = FaultProfile(throttle_rate=0.05, retry_after="seconds", retry_after_s=300)
        hooks = Hooks()
        waits: list[float] = []
        sent_at_stop: list[int] = []

        async def sleep(seconds: float) -> None:
            # Called for the throttled record's retry wait and for the quota's pause: once
            # both are waiting (the record that got the 429, and another worker held by
            # the pause), press Ctrl-C. No wait ends by itself: only the stop, by cancelling
            # it, lets a waiter go on, so nothing waits on the clock. The quota's spacing
            # of starts (a few ms) is not the question: it ends at once, the quota asking
            # again until the clock has passed it.
            if seconds <= MAX_SPREAD_S:
                await asyncio.sleep(0)
                return
            waits.append(seconds)
            if len(waits) == 2:
                sent_at_stop.append(len(tap.exchanges))
                hooks.stop.set()
            await asyncio.Event().wait()

        sim_cfg = sim_settings(faults=faults, seed=seed)
        async with Simulator(sim_cfg, middlewares=[tap.middleware]) as sim:
            settings = run_settings(sim, tmp_path, concurrency=2)
            result = await submit(settings, tmp_path, [path], hooks=hooks, sleep=sleep)
        # The only waits were the two the Retry-After of 300 s asked for (the second a
        # little shorter, being computed a moment later).
        assert [round(wait) for wait in waits] == [300, 300]
        assert len(tap.exchanges) == sent_at_stop[0]
        found = assert_each_once(result.out_dir, lines_of(path, 10))
        assert len(found["accepted"]) == len(tap.exchanges) - 1
        assert len(found["failed"]) == 10 - len(found["accepted"])
        assert all(line["reason"].startswith("not sent") for line in found["failed"])
        summary = read_summary(result.out_dir)
        assert summary["status"] == "interrupted"
        assert summary["not_sent"] == len(found["failed"])
        assert result.exit_code == 3


async def test_a_token_that_expires_during_a_pause_is_renewed_before_the_send(
    tmp_path: Path, tap: Tap
) -> None:
    """Workers hold their token while a 5 s Retry-After pauses them; the token lives 2 s.
    Each checks it again once the pause is over, so the register sees no expired token."""
    async with asyncio.timeout(30):
        concurrency = 4
        path = write_jsonl(tmp_path / "in.jsonl", records(20))
        seed = seed_throttling(0.05, lambda hits: hits == [2], 40)
        faults = FaultProfile(throttle_rate=0.05, retry_after="seconds", retry_after_s=5)
        clock = VirtualClock()
        cfg = sim_settings(faults=faults, seed=seed, token_lifetime_s=3)
        async with Simulator(
            cfg, clock=clock, sleep=clock.sleep, middlewares=[tap.middleware]
        ) as sim:
            settings = run_settings(sim, tmp_path, concurrency=concurrency)
            result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
            stats = sim.stats()
        found = assert_each_once(result.out_dir, lines_of(path, 20))
        assert len(found["accepted"]) == 20
        assert stats["http_429"] == 1
        [throttled] = [e for e in tap.exchanges if e.status == 429]
        after = [e for e in tap.exchanges if e.at >= throttled.at + 5.0]
        # The pause did hold workers that had taken their token before it.
        assert len(after) >= 20 - concurrency - 2
        assert [e.status for e in tap.exchanges if e.status == 401] == []
        assert read_summary(result.out_dir)["token_replays"] == 0
