"""The fault matrix: every fault profile of the simulator against the invariants of a run.

    profiles in pipeline/wem_der/simulator/data/faults/*.toml, plus variants  x  one `submit` each
        --> every input record in exactly one outcome, all of them stored
        --> at the register: each NMI once, holding exactly what was sent, no duplicate create
        --> no window of the quota over COUNT, at the client or at the server
        --> the client secret and the tokens in no log line, output or file

Time: the simulator and the run share a `VirtualClock`, so a profile's timeline (an outage
at 30 s, a revocation at 60 s, a Retry-After of 2 s, 200 ms of latency) passes without
waiting, in its real order, and every request reaches the register at the instant the
client's quota granted it. The quota is COUNT requests per window, the window set from the
profile's timeline (`Case.window_s`), so a run of RECORDS records spans four windows or
more and the quota is exercised. Retries do not back off (base_delay_s = 0).

The register runs with its "installation already exists" rule switched off, as a lax
register would: a create sent twice is then stored twice and counted in
`duplicate_creates`, instead of being refused and hidden.
"""

from __future__ import annotations

import asyncio
import logging
import math
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import wem_der.simulator
from wem_der.simulator import FaultProfile, Simulator
from wem_der.testing import VirtualClock

from tests.e2e import (
    CLIENT_ID,
    SECRET,
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
from tests.leaks import Secrets, assert_nothing_leaked, files_under, json_logs, record_tokens
from tests.register import unstamped

FAULTS = Path(wem_der.simulator.__file__).parent / "data" / "faults"
RECORDS = 100
CONDITIONAL_EVERY = 10  # every tenth record uses an inverter the register flags (code 2023)
# The quota: COUNT requests per window, so RECORDS take four windows at least. The
# client's window is MARGIN_S longer, the production default.
COUNT = 25
MARGIN_S = 0.1
# The quota sends in bursts a window apart, so an outage must last longer than a window to
# be sure to meet one; the run lasts at least three windows, so a revocation two windows in
# is met by the next burst.
OUTAGE_WINDOWS = 1.5
REVOCATION_WINDOWS = 2.0
WINDOW_S = 10.0  # for profiles without either


@dataclass(frozen=True)
class Case:
    name: str
    profile: FaultProfile

    @property
    def window_s(self) -> float:
        """The quota's window for this profile: its first outage or revocation is met."""
        if self.profile.outages:
            start, end = self.profile.outages[0]
            return (end - start) / OUTAGE_WINDOWS
        if self.profile.revoke_tokens_at_s:
            return self.profile.revoke_tokens_at_s[0] / REVOCATION_WINDOWS
        return WINDOW_S


def shipped() -> dict[str, dict[str, Any]]:
    """The fault profiles that ship with the simulator, by name."""
    return {path.stem: tomllib.loads(path.read_text()) for path in sorted(FAULTS.glob("*.toml"))}


def cases() -> list[Case]:
    """The shipped profiles, and variants of them."""
    profiles = shipped()
    found = [Case(name, FaultProfile.model_validate(raw)) for name, raw in profiles.items()]
    throttled = profiles["throttled"]
    # AEMO documents no Retry-After on 429 [doc]: the shipped profile sends seconds; the
    # other two forms a client must read, or go without.
    found.append(
        Case("throttled-no-retry-after", FaultProfile(**(throttled | {"retry_after": "absent"})))
    )
    found.append(
        Case("throttled-http-date", FaultProfile(**(throttled | {"retry_after": "http-date"})))
    )
    # Everything at once: rates adding up to 0.3, latency, the outages, and a revocation
    # during the first outage (at the outage's pace, the shipped one at 60 s would fall
    # after the end of the run).
    merged: dict[str, Any] = {}
    for raw in profiles.values():
        merged |= raw
    merged["revoke_tokens_at_s"] = [40.0]
    found.append(Case("everything", FaultProfile.model_validate(merged)))
    return found


CASES = cases()

# The faults the matrix must run, each with the case that runs it (a shipped profile, or a
# variant of one) and what that case's profile must set to inject it.
REQUIRED: dict[str, tuple[str, Callable[[FaultProfile], bool]]] = {
    "latency": ("slow", lambda p: p.latency_ms > 0),
    "500/503 mix": ("flaky", lambda p: p.error_rate_500 > 0 and p.error_rate_503 > 0),
    "outage": ("outage", lambda p: bool(p.outages)),
    "dropped connections": ("dropped", lambda p: p.drop_rate > 0),
    "applied-then-dropped": ("applied-then-dropped", lambda p: p.applied_then_dropped_rate > 0),
    "token revocation": ("revocation", lambda p: bool(p.revoke_tokens_at_s)),
    "throttling with Retry-After": (
        "throttled",
        lambda p: p.throttle_rate > 0 and p.retry_after == "seconds",
    ),
    "throttling without Retry-After": (
        "throttled-no-retry-after",
        lambda p: p.throttle_rate > 0 and p.retry_after == "absent",
    ),
}
VARIANTS = frozenset({"throttled-no-retry-after", "throttled-http-date", "everything"})


def test_the_matrix_covers_every_kind_of_fault() -> None:
    """Each required fault has its shipped profile and a case that injects it; every fault
    setting and Retry-After form is exercised."""
    by_name = {case.name: case.profile for case in CASES}
    wanted = {name for name, _ in REQUIRED.values()}
    assert sorted(wanted - VARIANTS - set(shipped())) == []  # a profile file is missing
    assert [
        fault
        for fault, (name, injects) in REQUIRED.items()
        if name not in by_name or not injects(by_name[name])
    ] == []
    default = FaultProfile()
    for name in FaultProfile.model_fields:
        if name not in ("retry_after", "retry_after_s"):
            used = [c.name for c in CASES if getattr(c.profile, name) != getattr(default, name)]
            assert used, f"no case sets {name}"
    forms = {c.profile.retry_after for c in CASES if c.profile.throttle_rate > 0}
    assert forms == {"absent", "seconds", "http-date"}


def lax_rules(directory: Path) -> Path:
    """The bundled rules with "installation already exists" switched off."""
    text = resources.files("wem_der.simulator").joinpath("data/rules.toml").read_text("utf-8")
    header = "[first_level.installation_exists]\n"
    assert text.count(header) == 1
    path = directory / "lax-rules.toml"
    path.write_text(text.replace(header, header + "enabled = false\n"), encoding="utf-8")
    return path


def inputs() -> list[dict[str, Any]]:
    """RECORDS realistic records; every tenth one the register accepts as conditional."""
    recs = records(RECORDS)
    for rec in recs[CONDITIONAL_EVERY - 1 :: CONDITIONAL_EVERY]:
        rec["acConnections"][0]["details"]["modelNumber"] = "UNAPPROVED-1"
    return recs


def recording(
    sleep: Callable[[float], Awaitable[None]], into: list[float]
) -> Callable[[float], Awaitable[None]]:
    """`sleep`, noting each wait asked of it (the simulator's latency, here)."""

    async def recorded(seconds: float) -> None:
        into.append(seconds)
        await sleep(seconds)

    return recorded


def evidence(
    case: Case, stats: dict[str, Any], tap: Tap, started: float, waits: list[float]
) -> list[str]:
    """The faults of its profile the run did not meet (evidence from the register's side)."""
    p = case.profile
    by_status: dict[str, int] = {}
    for counts in stats["requests"].values():
        for status, count in counts.items():
            by_status[status] = by_status.get(status, 0) + count
    missing = []
    if p.latency_ms and not (waits and min(waits) >= p.latency_ms / 1000):
        missing.append("latency")
    if p.throttle_rate and not stats["throttled_by_fault"]:
        missing.append("429 by fault")
    if p.error_rate_500 and not by_status.get("500"):
        missing.append("500")
    if p.error_rate_503 and not by_status.get("503"):
        missing.append("503")
    if p.drop_rate and not stats["dropped"] > stats["applied_then_dropped"]:
        missing.append("dropped connection")
    if p.applied_then_dropped_rate and not stats["applied_then_dropped"]:
        missing.append("applied then dropped")
    in_outage = [
        e
        for e in tap.exchanges
        if any(start <= e.at - started < end for start, end in p.outages) and e.status == 503
    ]
    if p.outages and not in_outage:
        missing.append("outage")
    if p.revoke_tokens_at_s and not (stats["tokens_issued"] >= 2 and by_status.get("401")):
        missing.append("token revocation")
    return missing


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_invariants_hold_under_faults(
    case: Case,
    tmp_path: Path,
    tap: Tap,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One run through the profile: nothing lost or doubled, the quota kept, no secret shown."""
    caplog.set_level(logging.DEBUG)
    secrets = Secrets(CLIENT_ID, SECRET)
    async with asyncio.timeout(30):
        recs = inputs()
        path = write_jsonl(tmp_path / "in.jsonl", recs)
        clock = VirtualClock()
        waits: list[float] = []
        sim_cfg = sim_settings(
            faults=case.profile,
            seed=0,
            quota_count=COUNT,
            quota_period_s=case.window_s,
            rules_file=lax_rules(tmp_path),
        )
        with json_logs() as logs:
            async with Simulator(
                sim_cfg,
                clock=clock,
                sleep=recording(clock.sleep, waits),
                middlewares=[tap.middleware, record_tokens(secrets)],
            ) as sim:
                settings = run_settings(
                    sim,
                    tmp_path,
                    rate_limit=f"{COUNT}/{case.window_s}s",
                    quota_margin_s=MARGIN_S,
                    concurrency=8,
                    max_attempts=100,
                    max_elapsed_s=1e6,
                )
                result = await submit(settings, tmp_path, [path], clock=clock, sleep=clock.sleep)
                stats = sim.stats()
                started = sim.state.started_at
                stored = {v.record["nmi"]: v for v in sim.store.installations()}

    # The run met every fault of its profile: the case is not passing vacuously.
    assert evidence(case, stats, tap, started, waits) == []

    # Every input record in exactly one outcome, and every one of them stored.
    found = assert_each_once(result.out_dir, lines_of(path, RECORDS))
    assert [line["reason"] for line in found["failed"] + found["rejected"]] == []
    conditional = {line["source"]["line"] for line in found["conditional"]}
    assert conditional == set(range(CONDITIONAL_EVERY, RECORDS + 1, CONDITIONAL_EVERY))
    assert len(found["accepted"]) == RECORDS - len(conditional)

    # At the register: each NMI once, holding exactly what was sent; nothing written twice.
    assert stats["duplicate_creates"] == 0
    assert (stats["installations"], stats["installation_versions"]) == (RECORDS, RECORDS)
    assert {nmi: unstamped(v.record) for nmi, v in stored.items()} == {r["nmi"]: r for r in recs}
    assert {n for n, r in enumerate(recs, 1) if stored[r["nmi"]].exceptions} == conditional

    # The quota: never more than COUNT in a window, as the server counted every arrival.
    assert stats["max_requests_in_window"] <= COUNT
    # ... and the client's quota paced the run. Its window is the server's plus the margin,
    # so the n requests it granted, COUNT to a window, took ceil(n / COUNT) of its windows:
    # the last left that many windows less one after the first (less one margin, for the
    # first arrival's way from its grant). Unpaced, the run would take a small part of one.
    arrivals = [e.at for e in tap.exchanges]
    assert len(arrivals) == stats["der_requests_received"]
    window = case.window_s + MARGIN_S
    paced = (math.ceil(len(arrivals) / COUNT) - 1) * window - MARGIN_S
    assert max(arrivals) - min(arrivals) >= paced
    assert stats["quota_refused"] == 0
    assert stats["http_429"] == stats["throttled_by_fault"]
    summary = read_summary(result.out_dir)
    assert summary["max_requests_in_window"] <= COUNT
    assert summary["http_429"] == stats["http_429"]
    # Every attempt the server saw went through the client's quota: none it did not count.
    assert summary["requests"] == stats["der_requests_received"]

    # No secret, in any shape, in logs, console output or any file the run left.
    out, err = capsys.readouterr()
    assert b"auth.token_refreshed" in logs.getvalue()  # the log capture saw the run
    assert secrets.tokens
    places = {
        "structlog output": logs.getvalue(),
        "stdlib logging": caplog.text.encode(),
        "stdout": out.encode(),
        "stderr": err.encode(),
        **files_under(tmp_path),
    }
    assert_nothing_leaked(secrets, places)
