"""submit, end to end: tokens that expire or are revoked mid-run, and refused credentials."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import SecretStr
from wem_der.errors import CredentialsRefused
from wem_der.records.outcomes import OutcomeRecord
from wem_der.run.wiring import Hooks
from wem_der.simulator import FaultProfile, Simulator
from wem_der.testing import VirtualClock

from tests.e2e import (
    CLIENT_ID,
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
from tests.leaks import Secrets, assert_nothing_leaked, files_under
from tests.scripted import Reply, serve


def step_per_outcome(clock: VirtualClock, seconds: float) -> Hooks:
    """Hooks whose clock moves `seconds` each time a record is finished: time passes as
    the run progresses, at the same points on every run."""

    def on_outcome(outcome: OutcomeRecord) -> None:
        clock.jump(seconds)

    return Hooks(on_outcome=on_outcome)


async def test_tokens_expiring_mid_run_are_refreshed_ahead_of_time(tmp_path: Path) -> None:
    """3 s tokens over an 8 s run: renewed before they expire, so the register sees no 401."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(80))
        clock = VirtualClock()
        async with Simulator(sim_settings(token_lifetime_s=3), clock=clock) as sim:
            settings = run_settings(sim, tmp_path)
            hooks = step_per_outcome(clock, 0.1)
            result = await submit(settings, tmp_path, [path], hooks=hooks, clock=clock)
            stats = sim.stats()
        found = assert_each_once(result.out_dir, lines_of(path, 80))
        assert len(found["accepted"]) == 80
        assert stats["requests"]["installation.create"] == {"200": 80}
        summary = read_summary(result.out_dir)
        # Told 2 s (AEMO's "lifetime - 1"), the client renews once half of that has passed:
        # about every second of the 8 s the run lasts.
        assert summary["token_refreshes"] == stats["tokens_issued"]
        assert 6 <= stats["tokens_issued"] <= 10
        assert summary["token_replays"] == 0


async def test_revoked_tokens_cost_one_refresh_and_one_replay(tmp_path: Path, tap: Tap) -> None:
    """Two revocations mid-run: each 401 is replayed once with a new token; one refresh each."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(60))
        clock = VirtualClock()
        faults = FaultProfile(revoke_tokens_at_s=(1.0, 2.0))
        finished = 0

        def on_outcome(outcome: OutcomeRecord) -> None:
            nonlocal finished
            finished += 1
            if finished in (15, 35):  # the register revokes every token issued so far
                clock.jump(1.0)

        sim_cfg = sim_settings(faults=faults)
        async with Simulator(sim_cfg, clock=clock, middlewares=[tap.middleware]) as sim:
            settings = run_settings(sim, tmp_path, concurrency=4)
            result = await submit(settings, tmp_path, [path], hooks=Hooks(on_outcome=on_outcome))
            stats = sim.stats()
        found = assert_each_once(result.out_dir, lines_of(path, 60))
        assert len(found["accepted"]) == 60
        refused = [e for e in tap.exchanges if e.status == 401]
        assert len(refused) >= 2
        for exchange in refused:
            assert exchange.nmi is not None
            sent = tap.for_nmi(exchange.nmi)
            assert [e.status for e in sent] == [401, 200]
            assert sent[0].headers["Authorization"] != sent[1].headers["Authorization"]
        summary = read_summary(result.out_dir)
        assert summary["token_replays"] == len(refused)
        # However many 401s, one refresh per revocation (plus the first token).
        assert summary["token_refreshes"] == stats["tokens_issued"] == 3
        replayed = {e.nmi for e in refused}
        for line in found["accepted"]:
            assert line["attempts"] == (2 if line["nmi"] in replayed else 1)


async def test_a_401_after_an_accepted_refresh_is_replayed_again(tmp_path: Path) -> None:
    """401, replay answered 503, retry meets a second revocation: refreshed and replayed
    again (the second 401 is news, not the refreshed token being refused)."""
    async with asyncio.timeout(30), serve() as server:
        refused = {"transactionId": "txn-401", "errors": [{"code": "401", "title": "Unauthorised"}]}
        busy = {"transactionId": "txn-503", "errors": [{"code": "503", "title": "Unavailable"}]}
        server.script(
            Reply(200, TOKEN_BODY),
            Reply(401, refused),
            Reply(200, TOKEN_BODY),
            Reply(503, busy),
            Reply(401, refused),
            Reply(200, TOKEN_BODY),
            Reply(201, {"transactionId": "txn-ok", "data": {}}),
        )
        path = write_jsonl(tmp_path / "in.jsonl", records(1))
        result = await submit(scripted_settings(server.url, tmp_path), tmp_path, [path])
        found = assert_each_once(result.out_dir, lines_of(path, 1))
        [line] = found["accepted"]
        assert (line["attempts"], line["transaction_id"]) == (4, "txn-ok")
        summary = read_summary(result.out_dir)
        assert (summary["token_refreshes"], summary["token_replays"]) == (3, 2)


async def test_a_second_401_after_a_refresh_fails_the_record(tmp_path: Path) -> None:
    """A register that refuses every token: one refresh and one replay per record, no loop."""
    async with asyncio.timeout(30), serve() as server:
        token = TOKEN_BODY
        refused = {"transactionId": "txn-401", "errors": [{"code": "401", "title": "Unauthorised"}]}
        server.default = Reply(401, refused)
        # Record 1: token, 401, new token, 401. Record 2 (with that token): 401, token, 401.
        server.script(
            Reply(200, token), Reply(401, refused), Reply(200, token), Reply(401, refused)
        )
        server.script(Reply(401, refused), Reply(200, token), Reply(401, refused))
        path = write_jsonl(tmp_path / "in.jsonl", records(2))
        settings = scripted_settings(server.url, tmp_path)
        result = await submit(settings, tmp_path, [path])
        found = assert_each_once(result.out_dir, lines_of(path, 2))
        assert len(found["failed"]) == 2
        for line in found["failed"]:
            assert (line["attempts"], line["http_status"]) == (2, 401)
            assert line["reason"] == "401 again after a token refresh"
        paths = [seen.path for seen in server.seen]
        token_url, create_url = "/oauth/token", "/der/installation"
        assert paths == [token_url, create_url] * 2 + [create_url, token_url, create_url]
        summary = read_summary(result.out_dir)
        assert (summary["token_refreshes"], summary["token_replays"]) == (3, 2)


async def test_refused_credentials_stop_the_run_cleanly(tmp_path: Path) -> None:
    """A wrong client secret: one token request, nothing sent, exit 3, every record not sent."""
    async with asyncio.timeout(30):
        path = write_jsonl(tmp_path / "in.jsonl", records(5))
        wrong = "wrong-secret-5b1d0e"
        async with Simulator(sim_settings()) as sim:
            settings = run_settings(sim, tmp_path, client_secret=SecretStr(wrong))
            result = await submit(settings, tmp_path, [path])
            stats = sim.stats()
        assert isinstance(result.aborted, CredentialsRefused)
        assert result.exit_code == 3
        # Refused credentials are not asked again: that could lock the account out.
        assert stats["requests"] == {"oauth.token": {"401": 1}}
        found = assert_each_once(result.out_dir, lines_of(path, 5))
        assert len(found["failed"]) == 5
        for line in found["failed"]:
            assert line["reason"].startswith("not sent")
            assert line["attempts"] == 0
        summary = read_summary(result.out_dir)
        assert summary["status"] == "aborted"
        assert "refused the client credentials" in summary["abort_reason"]
        assert (summary["not_sent"], summary["requests"]) == (5, 0)
        # The refused secret, plain or as the Basic credentials it was sent in, is in no file
        # the run left (the ledger's -wal and -shm included).
        written = files_under(tmp_path)
        assert_nothing_leaked(Secrets(CLIENT_ID, wrong), written)
