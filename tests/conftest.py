"""Fixtures shared by several test modules."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
from wem_der.cli.main import tune_gc

# Assertions in the end-to-end helpers explain themselves like those in test modules.
pytest.register_assert_rewrite("tests.e2e", "tests.leaks")

from tests.e2e import Tap, install_tap  # noqa: E402 - after the rewrite hook is registered
from tests.processes import Sim, simulator  # noqa: E402
from tests.scripted import Scripted, serve  # noqa: E402


@pytest.fixture
def tap(monkeypatch: pytest.MonkeyPatch) -> Tap:
    """Every DER request that simulators started in the test receive, in arrival order."""
    return install_tap(monkeypatch)


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
def run_gc() -> Iterator[None]:
    """The garbage collector as a run sets it (`wem_der.cli.main.tune_gc`), for one test.

    A test on `FastClock` keeps real time, and allows a request 0.1 s of it between its
    grant and its arrival at the simulator, as the production quota margin does. A full
    collection that traverses every object the earlier tests left takes about 100 ms late
    in the suite (measured), so one falling between a grant and its arrival would break
    the quota with no fault of the client's. With those objects frozen, as a run freezes
    its start-up objects, a collection traverses only what the test itself made.
    """
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
