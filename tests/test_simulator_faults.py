"""Fault injection: reproducible with a seed, on the injected clock and sleep."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError
from wem_der.simulator import FaultProfile, SimulatorSettings
from wem_der.simulator.testing import SimClient, connected, sample_installation
from wem_der.testing import VirtualClock

BASE = SimulatorSettings(client_secret=SecretStr("s"))


def with_faults(seed: int = 0, **faults: Any) -> SimulatorSettings:
    return BASE.model_copy(update={"seed": seed, "faults": FaultProfile(**faults)})


def get_url(client: SimClient) -> str:
    return f"{client.sim.installation_url}/installation/6001000001"


async def statuses(settings: SimulatorSettings, n: int) -> list[int]:
    async with connected(settings) as client:
        return [(await client.call("GET", get_url(client))).status for _ in range(n)]


async def test_same_seed_same_answers() -> None:
    """The same seed gives the same sequence of answers; another seed another one."""
    faults = {"throttle_rate": 0.1, "error_rate_500": 0.2, "error_rate_503": 0.2}
    async with asyncio.timeout(10):
        first = await statuses(with_faults(7, **faults), 40)
        again = await statuses(with_faults(7, **faults), 40)
        other = await statuses(with_faults(8, **faults), 40)
    assert first == again
    assert first != other
    assert {404, 429, 500, 503} <= set(first)


async def test_outage_window_answers_503() -> None:
    """Inside [start, end) seconds after start every DER request gets 503."""
    clock = VirtualClock()
    async with asyncio.timeout(10), connected(with_faults(outages=((10, 20),)), clock=clock) as c:
        assert (await c.call("GET", get_url(c))).status == 404
        clock.jump(10)
        outage = await c.call("GET", get_url(c))
        assert outage.status == 503
        assert outage.body["errors"][0]["code"] == "503"
        clock.jump(9.5)
        assert (await c.call("GET", get_url(c))).status == 503
        clock.jump(0.5)
        assert (await c.call("GET", get_url(c))).status == 404


async def test_drop_closes_the_connection_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dropped request gets no answer, stores nothing and logs no server error."""
    async with asyncio.timeout(10), connected(with_faults(drop_rate=1.0)) as client:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.create(sample_installation())
        assert client.sim.store.installation("6001000001") is None
        stats = client.sim.stats()
        assert stats["dropped"] == 1
        assert stats["requests"]["installation.create"] == {"dropped": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_applied_then_dropped_stores_the_change() -> None:
    """The change is stored, then the connection closes without an answer."""
    async with asyncio.timeout(10), connected(with_faults(applied_then_dropped_rate=1.0)) as c:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await c.create(sample_installation())
        assert c.sim.store.installation("6001000001") is not None
        assert c.sim.stats()["applied_then_dropped"] == 1


async def test_latency_uses_the_injected_sleep() -> None:
    """latency_ms plus up to jitter_ms is slept, through the injected sleep: each answer
    comes that long after its request, on the injected clock."""
    clock = VirtualClock()
    settings = with_faults(latency_ms=50, jitter_ms=10)
    waited: list[float] = []
    async with asyncio.timeout(10), connected(settings, clock=clock) as client:
        for _ in range(3):
            sent = clock()
            await client.call("GET", get_url(client))
            waited.append(clock() - sent)
    assert len(clock.sleeps) == 3
    assert all(0.05 <= s <= 0.06 for s in clock.sleeps)
    assert len(set(clock.sleeps)) == 3
    assert waited == pytest.approx(clock.sleeps)


async def test_throttle_rate_answers_429_whatever_the_quota() -> None:
    """Forced throttling is a 429, counted apart from the quota's."""
    async with asyncio.timeout(10), connected(with_faults(throttle_rate=1.0)) as client:
        assert (await client.call("GET", get_url(client))).status == 429
        stats = client.sim.stats()
        assert stats["throttled_by_fault"] == 1
        assert stats["quota_refused"] == 0
        assert stats["http_429"] == 1


def test_shipped_profiles_load() -> None:
    """Every example profile in data/faults parses and does something."""
    folder = resources.files("wem_der.simulator").joinpath("data/faults")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".toml"))
    assert len(names) >= 7
    for name in names:
        profile = FaultProfile.from_file(Path(str(folder.joinpath(name))))
        assert profile != FaultProfile(), name


@pytest.mark.parametrize(
    "fields",
    [
        {"error_rate_500": 0.6, "drop_rate": 0.5},
        {"outages": ((5, 5),)},
        {"dropped_outages": ((6, 5),)},
        {"outage_retry_after_s": -1},
        {"error_rate_503": 1.5},
        {"typo_rate": 0.1},
    ],
    ids=[
        "rates-over-1",
        "empty-outage",
        "backwards-dropped-outage",
        "negative-outage-retry-after",
        "rate-over-1",
        "unknown-key",
    ],
)
def test_bad_profiles_are_refused(fields: dict[str, Any]) -> None:
    """Profiles are validated when loaded, not when a request meets them."""
    with pytest.raises(ValidationError):
        FaultProfile(**fields)
