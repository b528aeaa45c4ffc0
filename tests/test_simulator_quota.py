"""The exact sliding-window quota, over HTTP and on its own, with an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Literal

import pytest
from pydantic import SecretStr
from wem_der.simulator import FaultProfile, SimulatorSettings
from wem_der.simulator.quota import SlidingWindowQuota
from wem_der.simulator.testing import SimClient, connected
from wem_der.testing import VirtualClock

SETTINGS = SimulatorSettings(client_secret=SecretStr("s"), quota_count=5, quota_period_s=10.0)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def client(clock: VirtualClock) -> AsyncIterator[SimClient]:
    async with connected(SETTINGS, clock=clock) as c:
        yield c


async def get_status(client: SimClient) -> int:
    return (
        await client.call("GET", f"{client.sim.installation_url}/installation/6001000001")
    ).status


async def test_exactly_count_per_window(client: SimClient, clock: VirtualClock) -> None:
    """COUNT requests pass in a window, the next is 429, and one passes once the first leaves."""
    async with asyncio.timeout(10):
        assert [await get_status(client) for _ in range(5)] == [404] * 5
        refused = await client.call("GET", f"{client.sim.installation_url}/installation/X")
        assert refused.status == 429
        assert refused.body["transactionId"]
        assert "Retry-After" not in refused.headers
        clock.jump(9.75)
        assert await get_status(client) == 429
        clock.jump(0.25)  # the first five leave the window (now - 10, now]
        assert await get_status(client) == 404
        stats = client.sim.stats()
        assert stats["http_429"] == 2
        assert stats["quota_refused"] == 2
        assert stats["requests"]["installation.get"] == {"404": 6, "429": 2}
        # Received in (t0 - 0.25, t0 + 9.75]: five admitted and two refused.
        assert stats["max_requests_in_window"] == 7
        assert stats["der_requests_received"] == 8


async def test_refused_answers_count_toward_the_quota(client: SimClient) -> None:
    """Requests answered 401 or 404 still use up the quota: the gateway admitted them."""
    async with asyncio.timeout(10):
        headers = {"X-initiatingParticipantID": "P", "X-market": "WEM"}
        url = f"{client.sim.installation_url}/installation/6001000001"
        for _ in range(3):
            assert (await client.send("GET", url, headers=headers)).status == 401
        for _ in range(2):
            assert (await client.call("GET", client.sim.installation_url + "/nope")).status == 404
        assert await get_status(client) == 429


@pytest.mark.parametrize("counts_refused", [False, True])
async def test_counting_refused_requests_is_a_setting(counts_refused: bool) -> None:
    """With quota_counts_refused, a refused request also fills the window."""
    clock = VirtualClock()
    settings = SETTINGS.model_copy(
        update={"quota_count": 2, "quota_counts_refused": counts_refused}
    )
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        assert await get_status(client) == 404  # t0
        clock.jump(5)
        assert await get_status(client) == 404  # t0 + 5
        clock.jump(1)
        assert await get_status(client) == 429  # t0 + 6
        clock.jump(4.5)  # t0 + 10.5: the window holds t0+5 (admitted) and t0+6 (refused)
        assert await get_status(client) == (429 if counts_refused else 404)


@pytest.mark.parametrize(
    ("mode", "check"),
    [("seconds", "7"), ("http-date", "date")],
)
async def test_retry_after_modes(mode: Literal["seconds", "http-date"], check: str) -> None:
    """Retry-After on a 429 is absent by default, or seconds, or an HTTP date."""
    settings = SETTINGS.model_copy(
        update={
            "quota_count": 1,
            "faults": FaultProfile(retry_after=mode, retry_after_s=7),
        }
    )
    async with asyncio.timeout(10), connected(settings) as client:
        await get_status(client)
        answer = await client.call("GET", f"{client.sim.installation_url}/installation/X")
        assert answer.status == 429
        value = answer.headers["Retry-After"]
        if check == "date":
            assert parsedate_to_datetime(value).tzinfo is not None
        else:
            assert value == check


def test_max_in_window_slides_rather_than_buckets() -> None:
    """Arrivals at 5,6,7 and 14,15,16 put 4 in the window (6, 16]; fixed buckets would say 3."""
    quota = SlidingWindowQuota(100, 10.0)
    for t in (5, 6, 7, 14, 15, 16):
        assert quota.arrive(t)
    assert quota.max_in_window == 4


def test_window_is_half_open() -> None:
    """A request leaves the window exactly `period` after it arrived."""
    quota = SlidingWindowQuota(2, 10.0)
    assert quota.arrive(0.0)
    assert quota.arrive(0.0)
    assert not quota.arrive(9.99)
    assert quota.arrive(10.0)
    assert quota.refused_total == 1
    assert quota.received_total == 4
