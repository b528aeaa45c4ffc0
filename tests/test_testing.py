"""wem_der.testing: the virtual clock the tests share, and the loop that tells it when to move."""

from __future__ import annotations

import asyncio

import pytest
from wem_der.testing import VirtualClock, settle


async def test_sleepers_wake_at_their_deadlines_in_order() -> None:
    """Earliest deadline first; sleepers due at one instant wake in the order they slept."""
    async with asyncio.timeout(5):
        clock = VirtualClock(start=0.0)
        woken: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woken.append((name, clock()))

        async with asyncio.TaskGroup() as tasks:
            for name, seconds in (("a", 3.0), ("b", 1.0), ("c", 3.0), ("d", 2.0)):
                tasks.create_task(sleeper(name, seconds))
    assert woken == [("b", 1.0), ("d", 2.0), ("a", 3.0), ("c", 3.0)]
    assert clock.sleeps == [3.0, 1.0, 3.0, 2.0]


async def test_time_stands_still_while_any_task_can_run() -> None:
    """A task that keeps running sees one instant; a sleeper's deadline comes after it waits."""
    async with asyncio.timeout(5):
        clock = VirtualClock(start=0.0)
        sleeping = asyncio.create_task(clock.sleep(5.0))
        seen = set()
        for _ in range(100):
            seen.add(clock())
            await asyncio.sleep(0)
        assert seen == {0.0}
        assert not sleeping.done()
        await sleeping
        assert clock() == 5.0


async def test_bytes_on_their_way_are_read_before_time_moves() -> None:
    """Bytes written to a loopback socket are read before the clock jumps: a client and a
    server on one clock see a request at the instant it was sent."""
    async with asyncio.timeout(5):
        clock = VirtualClock(start=0.0)
        arrived: list[float] = []

        async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(5)
            arrived.append(clock())
            writer.close()

        server = await asyncio.start_server(receive, "127.0.0.1", 0)
        async with server:
            host, port = server.sockets[0].getsockname()[:2]
            reader, writer = await asyncio.open_connection(host, port)
            await settle()  # connected on both sides: nothing left to run
            writer.write(b"hello")  # in the server's socket, not yet read
            # The writer sleeps at once, so the loop finds nothing to run while the bytes
            # wait to be read: the moment a clock that looked only at tasks would jump.
            await clock.sleep(1.0)
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
    assert arrived == [0.0]
    assert clock() == 1.0


async def test_a_cancelled_sleeper_is_passed_by() -> None:
    """Cancelling a sleep leaves nothing behind: time jumps to the next live deadline."""
    async with asyncio.timeout(5):
        clock = VirtualClock(start=0.0)
        cancelled = asyncio.create_task(clock.sleep(1.0))
        await asyncio.sleep(0)
        cancelled.cancel()
        await clock.sleep(2.0)
        assert clock() == 2.0
        assert clock.sleepers == 0


async def test_without_autojump_the_test_moves_the_clock() -> None:
    """Sleepers stay parked; `jump` moves time at once, `advance` a deadline at a time."""
    async with asyncio.timeout(5):
        clock = VirtualClock(start=0.0, autojump=False)
        woken: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woken.append((name, clock()))

        tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("a", 1.0), ("b", 2.0))]
        await settle()
        assert (clock.sleepers, woken) == (2, [])
        await clock.advance(5.0)  # b wakes at its own deadline, not at the end of the step
        assert woken == [("a", 1.0), ("b", 2.0)]
        assert clock() == 5.0
        late = asyncio.create_task(sleeper("c", 1.0))
        await settle()
        clock.jump(3.0)
        assert woken[-1][0] == "b"  # due, but not yet run
        await asyncio.gather(late, *tasks)
        assert woken[-1] == ("c", 8.0)


async def test_tick_gives_every_reading_its_own_time() -> None:
    """With `tick`, each reading moves the clock on."""
    clock = VirtualClock(start=10.0, tick=0.5)
    assert [clock(), clock.now(), clock()] == [10.0, 10.5, 11.0]


@pytest.mark.parametrize("seconds", [float("inf"), float("nan")])
async def test_a_sleep_must_be_finite(seconds: float) -> None:
    """An endless sleep is refused: jumping to it would end time for every other sleeper."""
    with pytest.raises(ValueError, match="finite"):
        await VirtualClock().sleep(seconds)


def test_time_does_not_go_back() -> None:
    """A negative jump is refused."""
    with pytest.raises(ValueError, match="does not go back"):
        VirtualClock().jump(-1.0)


def test_autojump_and_settle_need_the_virtual_loop() -> None:
    """On another event loop, what needs to know when the loop is quiet says so."""
    with pytest.raises(RuntimeError, match="VirtualLoop"):
        asyncio.run(VirtualClock().sleep(1.0))
    with pytest.raises(RuntimeError, match="VirtualLoop"):
        asyncio.run(settle())
