"""Waiting for whichever comes first: a moment, by an injected sleep, or an event.

A retry's wait ends early when the run stops (run/stages.py, `interruptible`); a worker
waiting out the register's outage wakes when the breaker closes (send/breaker.py). Both
sleep by the run's injected sleep, so that virtual time moves them in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def sleep_unless(
    event: asyncio.Event, sleep: Callable[[float], Awaitable[None]], seconds: float
) -> None:
    """Sleep `seconds` by `sleep`, or until `event` is set, whichever comes first. What the
    sleep raises (an interruptible sleep's `Interrupted`) is raised."""
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    if sleeper.done() and not sleeper.cancelled() and (error := sleeper.exception()) is not None:
        raise error
