"""Running the simulator on a real socket: `Simulator` (async context manager) and `serve`."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from wem_der.simulator.app import INSTALLATION_PREFIX, NMI_PREFIX, OAUTH_PREFIX, create_app
from wem_der.simulator.settings import SimulatorSettings
from wem_der.simulator.sqlite_store import SqliteStore
from wem_der.simulator.state import Arrival, Clock, SimState, Sleep
from wem_der.simulator.store import MemoryStore, Store


class Simulator:
    """The simulated register, listening on `settings.host:settings.port` while entered.

    `clock` drives token expiry, the quota window, outages and revocations; `sleep` serves
    latency faults. Tests inject both so that nothing waits on the wall clock.
    `middlewares` (aiohttp's) run around the simulator's own, the first outermost: a test
    watches every request and answer through one (`tests/e2e.py`'s tap).
    """

    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        ssl_context: ssl.SSLContext | None = None,
        middlewares: Sequence[Middleware] = (),
    ) -> None:
        self.settings = settings or SimulatorSettings()
        self._clock = clock
        self._sleep = sleep
        self._ssl_context = ssl_context
        self._middlewares = tuple(middlewares)
        self._runner: web.AppRunner | None = None
        self._state: SimState | None = None
        self.base_url = ""

    @property
    def state(self) -> SimState:
        """The running simulator's state (store, quota, tokens, stats)."""
        if self._state is None:
            raise RuntimeError("the simulator is not running: use `async with Simulator(...)`")
        return self._state

    @property
    def store(self) -> Store:
        """The record store, for direct assertions."""
        return self.state.store

    @property
    def oauth_url(self) -> str:
        return self.base_url + OAUTH_PREFIX

    @property
    def token_url(self) -> str:
        return self.oauth_url + "/token"

    @property
    def installation_url(self) -> str:
        return self.base_url + INSTALLATION_PREFIX

    @property
    def nmi_url(self) -> str:
        return self.base_url + NMI_PREFIX

    def stats(self) -> dict[str, Any]:
        """The same counters as `GET /_sim/stats`."""
        return self.state.snapshot()

    def arrivals(self) -> tuple[Arrival, ...]:
        """The latest requests, oldest first, as `GET /_sim/arrivals` lists them."""
        return tuple(self.state.stats.arrivals)

    async def __aenter__(self) -> Simulator:
        settings = self.settings
        store: Store = SqliteStore(settings.db_path) if settings.db_path else MemoryStore()
        try:
            state = SimState.build(settings, clock=self._clock, sleep=self._sleep, store=store)
            # auto_decompress=False: the handler sees the raw body, so the size limit counts
            # compressed bytes as received [doc: "10 MB ... compressed or not"]. No access
            # log: it would cost more than the request at benchmark rates.
            app = create_app(state, middlewares=self._middlewares)
            runner = web.AppRunner(app, auto_decompress=False, access_log=None)
            await runner.setup()
        except BaseException:
            store.close()
            raise
        try:
            site = web.TCPSite(runner, settings.host, settings.port, ssl_context=self._ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            store.close()
            raise
        host, port = runner.addresses[0][:2]
        scheme = "https" if self._ssl_context else "http"
        self.base_url = (
            f"{scheme}://{host}:{port}" if ":" not in host else f"{scheme}://[{host}]:{port}"
        )
        self._runner, self._state = runner, state
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, state = self._runner, self._state
        self._runner = self._state = None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            if state is not None:
                state.store.close()


async def serve(settings: SimulatorSettings) -> None:
    """Run a simulator until cancelled, after printing where its APIs are."""
    async with Simulator(settings) as sim:
        mode = (
            "open mode: any client secret is accepted"
            if settings.client_secret is None
            else "client secret required"
        )
        client = f"client id {settings.client_id!r}, {mode}"
        print(f"WEM DER Register simulator on {sim.base_url} ({client})")
        print(f"  OAuth:        {sim.oauth_url}")
        print(f"  Installation: {sim.installation_url}")
        print(f"  NMI:          {sim.nmi_url}")
        print(f"  Stats:        {sim.base_url}/_sim/stats", flush=True)
        await asyncio.Event().wait()
