"""Virtual time for tests: a clock whose seconds pass without anyone waiting for them.

Shipped with the package, as `structlog.testing` is, so that every test moves time the same
way, through the seams the code already offers: `clock=` and `sleep=` of a run, the quota,
the token provider and the simulator; `clock=` of the ledger and the progress bar.

    clock = VirtualClock()
    async with Simulator(simulated, clock=clock, sleep=clock.sleep) as sim:
        await execute(settings, plan, clock=clock, sleep=clock.sleep)

`clock()` (or `clock.now()`) reads the time; `await clock.sleep(seconds)` waits until the
clock reaches the deadline. Time moves

- by itself (`autojump`, the default): once the event loop has nothing to run and no
  socket has anything to read, the clock jumps to the earliest deadline and wakes the
  sleepers due then, in the order they went to sleep. Bytes on their way over loopback,
  which the kernel hands over as they are written, are read before time moves, so a client
  and a server on one clock see a request at the same instant: the order of events is the
  real one, and neither a loaded machine nor a garbage collection can put a request into
  the wrong quota window;
- at once, by `clock.jump(seconds)`, which wakes the sleepers then due;
- in steps, by `await clock.advance(seconds)`: one deadline at a time, the tasks it wakes
  running until they wait again before the next step (for a clock without autojump, whose
  sleepers stay parked until the test moves it).

`await settle()` lets every task run until all of them wait.

Knowing when the loop has nothing to do takes a loop that says so: `VirtualLoop`, asyncio's
selector loop with a selector that calls back instead of waiting (tests/conftest.py runs
every async test on it). What runs in another thread or process is not waited for: the
clock may move while it works, as it would have in real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import selectors
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["VirtualClock", "VirtualLoop", "settle"]


class _QuietSelector(selectors.BaseSelector):
    """The platform's selector, but when the loop would wait for events and none is ready,
    it calls the next callback that asked for that moment instead of waiting."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._when_quiet: deque[Callable[[], None]] = deque()

    def call_when_quiet(self, callback: Callable[[], None]) -> None:
        self._when_quiet.append(callback)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # The loop asks with a timeout of 0 while it has callbacks ready to run; with any
        # other, it has none and would sleep until an event or its next timer.
        if self._when_quiet and (timeout is None or timeout > 0):
            ready = self._selector.select(0)
            if ready:
                return ready
            # What the callback wakes runs in this iteration of the loop; the loop asks
            # again afterwards, and waits for real only once no callback is left.
            self._when_quiet.popleft()()
            return []
        return self._selector.select(timeout)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._selector.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._selector.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._selector.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._selector.get_map()

    def close(self) -> None:
        self._selector.close()


class VirtualLoop(asyncio.SelectorEventLoop):
    """asyncio's selector event loop, able to say when it has nothing to do."""

    def __init__(self) -> None:
        self._quiet = _QuietSelector()
        super().__init__(self._quiet)

    def call_when_quiet(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, the next time no callback is ready to run and no file
        descriptor has an event: one callback at each such moment, first asked first."""
        self._quiet.call_when_quiet(callback)


def _running_virtual_loop(why: str) -> VirtualLoop:
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualLoop):
        raise RuntimeError(
            f"{why} needs the event loop to be a wem_der.testing.VirtualLoop, not"
            f" {type(loop).__name__}: run the test on it (asyncio.Runner(loop_factory=...))"
        )
    return loop


async def settle() -> None:
    """Let every task run until all of them wait (on a clock, a socket or anything else)."""
    loop = _running_virtual_loop("settle()")
    quiet: asyncio.Future[None] = loop.create_future()

    def now_quiet() -> None:
        if not quiet.done():  # the waiting task may have been cancelled meanwhile
            quiet.set_result(None)

    loop.call_when_quiet(now_quiet)
    await quiet


class VirtualClock:
    """Monotonic seconds, starting at `start`, that pass only when moved.

    `autojump`: move to the next deadline by itself whenever the loop is quiet (see the
    module's docstring); without it the test moves the clock. `tick`: how far each reading
    moves it on, so that every event read from it has a time of its own (0: none).
    `sleeps` lists every wait asked of `sleep`, in order.
    """

    def __init__(self, start: float = 1000.0, *, autojump: bool = True, tick: float = 0.0) -> None:
        if tick < 0:
            raise ValueError(f"tick must not be negative, not {tick}")
        self._now = start
        self._autojump = autojump
        self._tick = tick
        self.sleeps: list[float] = []
        # (deadline, order of arrival, the sleeper's future): a heap, earliest first.
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._jump_asked = False

    def __call__(self) -> float:
        now = self._now
        if self._tick:
            self.jump(self._tick)
        return now

    def now(self) -> float:
        """The time; the same as calling the clock."""
        return self()

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting in `sleep`."""
        return sum(not wake.done() for _, _, wake in self._sleepers)

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has moved `seconds` on; 0 or less only yields to the loop."""
        if not math.isfinite(seconds):
            # Jumping to it would end time for every other sleeper: a caller's bug.
            raise ValueError(f"a sleep must be finite, not {seconds}")
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._arrivals), wake))
        if self._autojump:
            self._jump_when_quiet()
        await wake  # cancelled, the future is done, and a wake-up passes it by

    def jump(self, seconds: float) -> None:
        """Move the clock `seconds` on at once; the sleepers now due run when the loop next
        gets to them, in the order of their deadlines."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: cannot jump {seconds} s")
        self._wake_until(self._now + seconds)

    async def advance(self, seconds: float) -> None:
        """Move the clock `seconds` on, a deadline at a time: at each, the sleepers due run
        until every task waits again; then the clock stands `seconds` later than before."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: cannot advance {seconds} s")
        target = self._now + seconds
        await settle()
        while (deadline := self._next_deadline()) is not None and deadline <= target:
            self._wake_until(deadline)
            await settle()
        self._wake_until(target)
        await settle()

    def _next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # a cancelled sleeper
        return self._sleepers[0][0] if self._sleepers else None

    def _wake_until(self, when: float) -> None:
        self._now = max(self._now, when)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():
                wake.set_result(None)

    def _jump_when_quiet(self) -> None:
        if self._jump_asked:
            return
        loop = _running_virtual_loop("a VirtualClock with autojump")
        self._jump_asked = True

        def jump_to_next() -> None:
            self._jump_asked = False
            deadline = self._next_deadline()
            if deadline is None:
                return  # every sleeper was cancelled or woken meanwhile
            self._wake_until(deadline)
            if self._next_deadline() is not None:
                self._jump_when_quiet()

        loop.call_when_quiet(jump_to_next)
