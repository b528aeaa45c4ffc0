"""Outage windows: 503s or closed connections on the injected clock, the token endpoint in
them or spared, Retry-After, the command line, and the log of arrivals."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError
from wem_der.cli.main import parse as parse_cli
from wem_der.simulator import FaultProfile, SimulatorSettings
from wem_der.simulator.cli_args import settings_from_args
from wem_der.simulator.state import ARRIVALS_KEPT, Arrival
from wem_der.simulator.testing import Answer, SimClient, connected, sample_installation
from wem_der.testing import VirtualClock

BASE = SimulatorSettings(client_secret=SecretStr("s"))


def with_faults(**faults: Any) -> SimulatorSettings:
    return BASE.model_copy(update={"faults": FaultProfile(**faults)})


def get_url(client: SimClient) -> str:
    return f"{client.sim.installation_url}/installation/6001000001"


_NMIS = (f"600200{n:04d}" for n in itertools.count(1))


async def der_status(client: SimClient) -> int | str:
    """The status of one create (of a new NMI each time), or "dropped" when the connection
    closes unanswered."""
    # A create, not a GET: aiohttp sends an idempotent request again, once, when its
    # connection closes unanswered, and the register would see two.
    try:
        return (await client.create(sample_installation(next(_NMIS)))).status
    except aiohttp.ServerDisconnectedError:
        return "dropped"


async def token_answer(client: SimClient) -> Answer | None:
    """The token endpoint's answer, or None when the connection closes unanswered."""
    url = client.sim.token_url + "?grant_type=client_credentials"
    try:
        return await client.send("POST", url, headers={"Authorization": client.basic()})
    except aiohttp.ServerDisconnectedError:
        return None


async def test_outage_answers_503_from_its_start_to_its_end() -> None:
    """A 503 window holds from its start (inclusive) to its end (exclusive), on the
    simulator's clock, with the DER error envelope and no Retry-After by default."""
    clock = VirtualClock()
    settings = with_faults(outages=((10, 20),))
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        clock.jump(9.99)
        assert await der_status(client) == 200
        clock.jump(0.01)
        answer = await client.call("GET", get_url(client))
        assert answer.status == 503
        assert answer.body["errors"][0]["code"] == "503"
        assert "Retry-After" not in answer.headers
        clock.jump(9.99)
        assert await der_status(client) == 503
        clock.jump(0.01)
        assert await der_status(client) == 200
        stats = client.sim.stats()
    assert stats["outage_503"] == 2
    assert stats["outage_dropped"] == 0
    assert stats["requests"]["installation.create"] == {"200": 2, "503": 1}
    assert stats["requests"]["installation.get"] == {"503": 1}


async def test_dropped_outage_closes_connections_from_its_start_to_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Inside a dropped window every DER request's connection closes unanswered and nothing
    is stored; before and after it the register answers, and it logs no server error."""
    clock = VirtualClock()
    settings = with_faults(dropped_outages=((10, 20),))
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        clock.jump(9.99)
        assert await der_status(client) == 200
        clock.jump(0.01)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.create(sample_installation())
        assert client.sim.store.installation("6001000001") is None
        clock.jump(9.99)
        assert await der_status(client) == "dropped"
        clock.jump(0.01)
        assert await der_status(client) == 200
        stats = client.sim.stats()
    assert stats["outage_dropped"] == 2
    assert stats["dropped"] == 2
    assert stats["outage_503"] == 0
    assert stats["requests"]["installation.create"] == {"200": 2, "dropped": 2}
    assert stats["installations"] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_adjacent_windows_of_both_kinds() -> None:
    """A 503 window may end where a dropped one begins: each answers its own way."""
    clock = VirtualClock()
    settings = with_faults(outages=((10, 20),), dropped_outages=((20, 30),))
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        observed = []
        for step in (5, 5, 9.99, 0.01, 9.99, 0.01):
            clock.jump(step)
            observed.append(await der_status(client))
    assert observed == [200, 503, 503, "dropped", "dropped", 200]


@pytest.mark.parametrize(
    ("seconds", "header"), [(None, None), (30.0, "30"), (2.1, "3"), (0.0, "0")]
)
async def test_outage_retry_after(seconds: float | None, header: str | None) -> None:
    """An outage's 503 carries Retry-After in whole seconds, rounded up, only when asked;
    the 429's own Retry-After setting does not change it."""
    clock = VirtualClock()
    settings = with_faults(outages=((10, 20),), outage_retry_after_s=seconds, retry_after="seconds")
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        clock.jump(10)
        answer = await client.call("GET", get_url(client))
    assert answer.status == 503
    assert answer.headers.get("Retry-After") == header


@pytest.mark.parametrize("kind", ["outages", "dropped_outages"])
async def test_token_endpoint_is_spared_by_default(kind: str) -> None:
    """Without `outages_cover_token`, tokens are issued inside either kind of window while
    the DER APIs are down."""
    clock = VirtualClock()
    settings = with_faults(**{kind: ((10, 20),)})
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        clock.jump(10)
        answer = await token_answer(client)
        assert answer is not None
        assert answer.status == 200
        assert answer.body["acess_token"]
        assert await der_status(client) in (503, "dropped")
        tokens_issued = client.sim.stats()["tokens_issued"]
    assert tokens_issued == 2


async def test_outage_covering_the_token_endpoint_answers_it_503() -> None:
    """With `outages_cover_token`, the token endpoint answers 503 inside a 503 window, in
    the OAuth API's flat shape with the outage's Retry-After, and issues again after it."""
    clock = VirtualClock()
    settings = with_faults(outages=((10, 20),), outages_cover_token=True, outage_retry_after_s=5)
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        answers = []
        for step in (9.99, 0.01, 9.99, 0.01):
            clock.jump(step)
            answers.append(await token_answer(client))
        stats = client.sim.stats()
    assert [a.status if a else None for a in answers] == [200, 503, 503, 200]
    inside = answers[1]
    assert inside is not None
    assert inside.body["code"] == 503
    assert inside.body["title"] == "Service Unavailable"
    assert inside.headers["Retry-After"] == "5"
    assert stats["tokens_issued"] == 3  # connected()'s, and the two outside the window
    assert stats["requests"]["oauth.token"] == {"200": 3, "503": 2}
    assert stats["outage_503"] == 2


async def test_dropped_outage_covering_the_token_endpoint_closes_its_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With `outages_cover_token`, a token request inside a dropped window has its
    connection closed unanswered, and no token is issued."""
    clock = VirtualClock()
    settings = with_faults(dropped_outages=((10, 20),), outages_cover_token=True)
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        clock.jump(10)
        assert await token_answer(client) is None
        clock.jump(10)
        after = await token_answer(client)
        stats = client.sim.stats()
    assert after is not None
    assert after.status == 200
    assert stats["tokens_issued"] == 2
    assert stats["requests"]["oauth.token"] == {"200": 2, "dropped": 1}
    assert (stats["outage_dropped"], stats["dropped"]) == (1, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_arrival_log_says_when_each_request_came_and_how_it_went() -> None:
    """Every DER and token request is logged with its time since the simulator started (on
    its clock), its endpoint and its answer, in order; `GET /_sim/arrivals` lists the same,
    so a test can count what reached the register each second of an outage."""
    clock = VirtualClock()
    settings = with_faults(outages=((10, 11),), dropped_outages=((11, 12),))
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        clock.jump(10.25)
        for _ in range(3):
            await der_status(client)
        clock.jump(1)
        for _ in range(2):
            await der_status(client)
        clock.jump(1)
        await der_status(client)
        await client.fetch_token()
        logged = client.sim.arrivals()
        listed = await client.send("GET", client.sim.base_url + "/_sim/arrivals")
    create = "installation.create"
    assert logged == (
        Arrival(0.0, "oauth.token", "200"),
        *[Arrival(10.25, create, "503")] * 3,
        *[Arrival(11.25, create, "dropped")] * 2,
        Arrival(12.25, create, "200"),
        Arrival(12.25, "oauth.token", "200"),
    )
    assert listed.body["arrivals"] == [[a.at_s, a.endpoint, a.status] for a in logged]
    assert listed.body["received"] == len(logged)
    while_down = Counter(int(a.at_s) for a in logged if a.status in ("503", "dropped"))
    assert while_down == {10: 3, 11: 2}


async def test_arrival_log_is_bounded_and_reset() -> None:
    """The log keeps the latest `ARRIVALS_KEPT` requests, and a reset empties it."""
    async with asyncio.timeout(10), connected(BASE) as client:
        assert client.sim.state.stats.arrivals.maxlen == ARRIVALS_KEPT
        assert len(client.sim.arrivals()) == 1
        await client.send("POST", client.sim.base_url + "/_sim/reset")
        assert client.sim.arrivals() == ()


def parse(*argv: str) -> SimulatorSettings:
    options = parse_cli(["simulate", *argv])
    assert isinstance(options, dict), options
    return settings_from_args(options)


def test_cli_outage_flags() -> None:
    """--outage and --dropped-outage repeat, and set the windows with the Retry-After and
    the token endpoint's coverage; absent, none is set."""
    faults = parse(
        "--outage", "10:20", "--outage", "30.5:40", "--dropped-outage", "50:60",
        "--outage-retry-after", "2.5", "--outages-cover-token",
    ).faults  # fmt: skip
    assert faults.outages == ((10.0, 20.0), (30.5, 40.0))
    assert faults.dropped_outages == ((50.0, 60.0),)
    assert faults.outage_retry_after_s == 2.5
    assert faults.outages_cover_token
    assert parse().faults == FaultProfile()


def test_cli_outage_flags_override_the_profile(tmp_path: Path) -> None:
    """A given flag replaces the profile file's key; one not given leaves it standing."""
    profile = tmp_path / "p.toml"
    profile.write_text(
        "outages = [[1.0, 2.0]]\ndropped_outages = [[5.0, 6.0]]\noutages_cover_token = true\n"
    )
    faults = parse("--faults", str(profile), "--outage", "3:4", "--outages-spare-token").faults
    assert faults.outages == ((3.0, 4.0),)
    assert faults.dropped_outages == ((5.0, 6.0),)
    assert not faults.outages_cover_token
    assert parse("--faults", str(profile)).faults.outages_cover_token


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--outage", "60-180"], "expected START:END"),
        (["--dropped-outage", "1m:2m"], "expected START:END"),
        (["--outage", "20:10"], "ends before it starts"),
        (["--dropped-outage", "5:5"], "ends before it starts"),
    ],
)
def test_cli_refuses_a_bad_window(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A window that is not START:END, or ends before it starts, is a usage error."""
    assert parse_cli(["simulate", *argv]) == 2
    assert expected in capsys.readouterr().err


def test_overlapping_windows_of_both_kinds_are_refused() -> None:
    """A request cannot be answered 503 and dropped at once: the profile says which clash."""
    with pytest.raises(ValidationError, match=r"\[10\.0, 20\.0\) overlaps dropped"):
        FaultProfile(outages=((10, 20),), dropped_outages=((19, 30),))
