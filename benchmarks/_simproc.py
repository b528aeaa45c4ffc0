"""The simulator in its own process, logging the arrival time of every DER request.

    python -m benchmarks._simproc [the flags of `wem-der simulate`]

The simulator is the package's own (`wem_der.simulator.Simulator`, same flags as
`wem-der simulate`), with one addition for benchmarks: its quota also keeps the
`time.monotonic()` of every DER request as it arrives, refused ones included. A second,
tiny server (the control port) serves that log, so the simulator's own routes are
untouched. CLOCK_MONOTONIC is one clock for the whole machine on Linux, so another process
can compare its own `time.monotonic()` with these arrivals (time to first request).

Once listening it prints one JSON line on stdout with its URLs, then serves until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from array import array
from typing import Any

import click
import orjson
from aiohttp import web
from wem_der.simulator import Simulator
from wem_der.simulator.cli_args import settings_from_args, simulator_options
from wem_der.simulator.quota import SlidingWindowQuota


class RecordingQuota(SlidingWindowQuota):
    """The simulator's exact sliding-window quota, plus a log of every arrival."""

    def __init__(self, count: int, period_s: float, *, counts_refused: bool = False) -> None:
        super().__init__(count, period_s, counts_refused=counts_refused)
        self.arrivals = array("d")

    def arrive(self, now: float) -> bool:
        self.arrivals.append(now)
        return super().arrive(now)

    def reset(self) -> None:
        # POST /_sim/reset forgets the quota's history: the log goes with it.
        super().reset()
        self.arrivals = array("d")


def _control_app(quota: RecordingQuota) -> web.Application:
    async def arrivals(request: web.Request) -> web.Response:
        body = {"arrivals": quota.arrivals.tolist(), "now": time.monotonic()}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/arrivals", arrivals)
    return app


async def _serve(options: dict[str, Any]) -> None:
    settings = settings_from_args(options)
    async with Simulator(settings) as sim:
        old = sim.state.quota
        quota = RecordingQuota(
            old.count, old.period_s, counts_refused=settings.quota_counts_refused
        )
        # Swapped before the URLs are printed, so no request has arrived yet.
        sim.state.quota = quota
        runner = web.AppRunner(_control_app(quota), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            ready = {
                "pid": os.getpid(),
                "base_url": sim.base_url,
                "token_url": sim.token_url,
                "installation_url": sim.installation_url,
                "nmi_url": sim.nmi_url,
                "control_url": f"http://{host}:{port}",
            }
            sys.stdout.write(orjson.dumps(ready).decode() + "\n")
            sys.stdout.flush()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _start(**options: Any) -> None:
    if options["host"] not in {"127.0.0.1", "localhost", "::1"}:
        raise click.UsageError("benchmarks only listen on loopback")
    asyncio.run(_serve(options))


def main() -> None:
    command = click.Command("_simproc", params=simulator_options(), callback=_start)
    command.main(prog_name="python -m benchmarks._simproc")


if __name__ == "__main__":
    main()
