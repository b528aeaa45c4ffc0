"""Streaming records out of input files, each with its path and line.

Each input is read in chunks, so memory does not grow with its size; read/formats.py finds its
format and turns the chunks into items. Bad input never stops the run: a problem becomes
an item with an `error`, and a file whose bytes end early (it shrank, or a read failed)
gives way to the next file. One input is open at a time.

The reading and the splitting into records run in a thread of their own, so a large input
does not stall the event loop. The items it finds go to the event loop in batches: a batch
is handed over when it is full, when a stream has nothing more to read for now (so a record
reaches the run as soon as its line is complete, however slowly a pipe brings the next),
and when its first item has waited `_HOLD_S` (a line of endless bytes holds up no record).
Nothing in that thread waits without looking up: a stream (a pipe, a terminal, a device)
is read only once `poll` says it has bytes, and every wait looks at least every `_LOOK_MS`
whether the caller is gone (the run was stopped at once, or left the input) or the run is
stopping, which a stream is not waited for (see `iter_items`). So every read gives way to
a stop, whatever the input is doing.

Decoding a record's JSON is deferred (`SourceItem.deferred`): it happens on the event loop
when the record is first read, at pre-flight as a rule, so a resumed run never pays it for
the records it skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from typing import BinaryIO, TypeVar

from wem_der.errors import InputError
from wem_der.files.limits import shortage
from wem_der.files.pathtext import to_text
from wem_der.read.formats import READ_SIZE, StreamError, items_from_chunks
from wem_der.records.outcomes import SourceItem, SourceRef

_T = TypeVar("_T")

STDIN = "-"
_READABLE = frozenset({stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK})
# AEMO takes at most 10 MB per request; a little room on top for whitespace and the
# `data` wrapper, since pre-flight checks the exact size of the request body.
MAX_ITEM_BYTES = 10 * 2**20 + 64 * 1024
# How long the reading thread waits on an idle stream before it looks again whether it is
# still wanted: how late a stop can reach a reader that has nothing to read.
_LOOK_MS = 50
# How long an item that has been read waits, at most, for the rest of its batch while the
# reading goes on (a long run of bytes that holds no record, such as a line over the limit).
_HOLD_S = 0.05
# Why a stream ends when the run stops; items_from_chunks adds " after line N".
_STREAM_LEFT = (
    "the rest of this stream (standard input, a pipe or a device) was left unread, and it"
    " cannot be read again: nothing was read"
)


def check_paths(paths: Sequence[str]) -> None:
    """Fail before any work starts if an input cannot be read at all.

    Nothing is opened: opening a named pipe to look at it would let its writer start, and
    what it wrote would be lost with the close, and the real open would then wait for a
    writer that is gone. A pipe is opened once, to be read.
    """
    if sum(path == STDIN for path in paths) > 1:
        raise InputError("'-' (standard input) is given more than once; it can be read once")
    # Python's own sign that descriptor 0 was closed when the process started (`<&-`); a
    # file opened since may hold it, so `/dev/stdin` (or a link to it) is refused as well.
    if sys.stdin is None:
        descriptor = os.path.realpath("/proc/self/fd/0")
        for path in paths:
            if path == STDIN or os.path.realpath(path) == descriptor:
                raise InputError(
                    f"{path!r} names standard input, which is closed; pipe the records in, or"
                    " give a file"
                )
    for path in paths:
        if path == STDIN:
            continue
        name = to_text(path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise InputError(f"input file not found: {name}") from None
        except PermissionError:
            raise InputError(f"input file is not readable (permission denied): {name}") from None
        except OSError as exc:
            raise InputError(f"cannot open input file {name}: {_why(exc)}") from None
        if stat.S_ISDIR(mode):
            raise InputError(f"input path is a directory, not a file: {name}; name its files")
        if stat.S_ISSOCK(mode):
            raise InputError(f"input path is a socket, not a file: {name}")
        # `/dev/fd/N` names whatever this process holds as N: in a process that did not
        # inherit N (a resume of a run fed by `<(...)`), its own event loop, say.
        if stat.S_IFMT(mode) not in _READABLE:
            raise InputError(f"input path is not a file, a pipe or a device: {name}")
        if not os.access(path, os.R_OK):
            raise InputError(f"input file is not readable (permission denied): {name}")


async def iter_items(
    paths: Sequence[str],
    *,
    stdin: BinaryIO | None = None,
    chunk_lines: int = 512,
    max_item_bytes: int = MAX_ITEM_BYTES,
    stop: asyncio.Event | None = None,
    read: Callable[[int, int], bytes] = os.read,
) -> AsyncGenerator[SourceItem, None]:
    """Every JSON value in `paths`, in order, or the reason one could not be read.

    `-` reads `stdin` (default: the process's standard input, binary). At most
    `chunk_lines` items go to the event loop at a time. Once `stop` is set, a regular
    file is still read to its end (so that the run can account for every record in it),
    but a stream is not read any further: what it has not given yet may never come, or
    never end. It ends with one item that says after which line it was left.

    `read(fd, size)` reads a chunk from an input's descriptor, in the reading thread: a
    test passes one that watches the reads, or changes the file between two of them.
    """
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be at least 1, not {chunk_lines}")
    reader = _Reader(chunk_lines, read)
    watch: asyncio.Task[bool] | None = None
    if stop is not None:
        watch = asyncio.create_task(stop.wait())

        def stopping(done: asyncio.Task[bool]) -> None:
            if not done.cancelled():
                reader.stopping.set()

        watch.add_done_callback(stopping)
    reader.start(_all_items(paths, stdin, max_item_bytes, reader))
    try:
        while batch := await reader.take():
            for item in batch:
                yield item
    finally:
        if watch is not None:
            watch.cancel()
        await reader.close()


def _all_items(
    paths: Sequence[str], stdin: BinaryIO | None, limit: int, reader: _Reader
) -> Generator[SourceItem, None, None]:
    for path in paths:
        yield from _path_items(path, stdin, limit, reader)


class _Gone(Exception):
    """The caller of `iter_items` is gone: the reading thread lets go of the input and ends."""


class _Reader:
    """A thread that reads the items of the inputs and hands them to the event loop.

    The event loop asks for a batch (`take`); the thread hands over the items it has read
    when asked, and reads on meanwhile, up to one batch ahead. `close` makes the thread
    let go of its input wherever it is, and waits until it has.
    """

    def __init__(self, size: int, read: Callable[[int, int], bytes]) -> None:
        self._size = size
        self.read = read  # how the thread reads a chunk from a descriptor
        self._loop = asyncio.get_running_loop()
        self._changed = threading.Condition()
        self._asked: asyncio.Future[list[SourceItem]] | None = None
        self._gone = False
        self._batch: list[SourceItem] = []  # the thread's alone, as is _since
        self._since = 0.0  # when the first item of _batch was read
        self.stopping = threading.Event()  # the run is stopping: streams are left
        self._ended: asyncio.Future[None] = self._loop.create_future()
        self._thread: threading.Thread | None = None

    def start(self, items: Generator[SourceItem, None, None]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(items,), name="wem-der-reader", daemon=True
        )
        self._thread.start()

    async def take(self) -> list[SourceItem]:
        """The next batch of items; an empty one at the end of the inputs."""
        asked: asyncio.Future[list[SourceItem]] = self._loop.create_future()
        with self._changed:
            self._asked = asked
            self._changed.notify()
        return await asked

    async def close(self) -> None:
        """Make the thread let go of its input, and wait until it has ended."""
        with self._changed:
            self._gone = True
            self._changed.notify()
        await self._ended
        if self._thread is not None:
            self._thread.join()  # it has said its last word: this is its return

    # The rest runs on the reading thread.

    def _run(self, items: Generator[SourceItem, None, None]) -> None:
        try:
            for item in items:
                if not self._batch:
                    self._since = time.monotonic()
                self._batch.append(item)
                if len(self._batch) >= self._size:
                    self.hand_over()
            self.hand_over()
            self._give([])
        except _Gone:
            pass
        except Exception as exc:  # a bug: raised where the items are awaited, not lost here
            with contextlib.suppress(_Gone):
                self._give(exc)
        finally:
            # Closes the input if the reading stopped between two of its items.
            items.close()
            with contextlib.suppress(RuntimeError):  # the event loop is closed: no one waits
                self._loop.call_soon_threadsafe(_settle, self._ended, None)

    def hand_over(self) -> None:
        """Give the items read so far to the event loop (when it asks for them)."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._give(batch)

    def due(self) -> None:
        """Hand over the items read so far if the first of them has waited long enough."""
        if self._batch and time.monotonic() - self._since >= _HOLD_S:
            self.hand_over()

    def _give(self, batch: list[SourceItem] | BaseException) -> None:
        with self._changed:
            while self._asked is None:
                if self._gone:
                    raise _Gone
                self._changed.wait()
            asked, self._asked = self._asked, None
        self._loop.call_soon_threadsafe(_settle, asked, batch)

    def look(self, *, stream: bool) -> None:
        """Raise if the reading must end here: the caller is gone, or a stream is left."""
        if self._gone:
            raise _Gone
        if stream and self.stopping.is_set():
            raise StreamError(_STREAM_LEFT)


def _settle(future: asyncio.Future[_T], result: _T | BaseException) -> None:
    if future.done():  # cancelled: its caller is gone
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _path_items(
    path: str, stdin: BinaryIO | None, limit: int, reader: _Reader
) -> Iterator[SourceItem]:
    if path == STDIN:
        source = sys.stdin.buffer if stdin is None else stdin
        try:
            fd = source.fileno()
        except (OSError, ValueError):
            # Not backed by a descriptor (an in-memory stream): it never waits.
            yield from items_from_chunks(path, _read(source.read, reader, poll_fd=None), limit)
            return
        # Not from its buffer: what poll says is waiting is what the descriptor holds.
        yield from items_from_chunks(path, _fd_chunks(fd, reader, sized=False), limit)
        return
    try:
        # O_NONBLOCK: opening a named pipe must not wait for its writer here, where no stop
        # could reach it; its bytes are waited for with poll instead.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        # check_paths ran earlier, but the file may have gone since.
        yield SourceItem(SourceRef(path), error=f"cannot open file: {_why(exc)}")
        return
    try:
        yield from items_from_chunks(path, _fd_chunks(fd, reader, sized=True), limit)
    finally:
        os.close(fd)


def _fd_chunks(fd: int, reader: _Reader, *, sized: bool) -> Iterator[bytes]:
    """The chunks of `fd`. A regular file never waits, and if `sized` it must give the size
    it had when opened; anything else is a stream, read when poll says it has bytes."""
    info = os.fstat(fd)
    regular = stat.S_ISREG(info.st_mode)
    return _read(
        lambda size: reader.read(fd, size),
        reader,
        poll_fd=None if regular else fd,
        expected=info.st_size if regular and sized else None,
    )


def _read(
    read: Callable[[int], bytes | None],
    reader: _Reader,
    *,
    poll_fd: int | None,
    expected: int | None = None,
) -> Iterator[bytes]:
    """Raw chunks; a regular file that ends short of its size at open shrank under us."""
    stream = poll_fd is not None
    poller = select.poll()
    if poll_fd is not None:
        # An end (POLLHUP) or an error (POLLERR) is reported too, and the read then says which.
        poller.register(poll_fd, select.POLLIN)
    total = 0
    while True:
        reader.look(stream=stream)
        if stream and not poller.poll(0):
            # Nothing to read for now: what has been read goes to the run before the wait.
            reader.hand_over()
            while not poller.poll(_LOOK_MS):
                reader.look(stream=stream)
        else:
            reader.due()
        try:
            chunk = read(READ_SIZE)
        except BlockingIOError:
            continue  # another reader of the same pipe took what poll saw
        except OSError as exc:
            raise StreamError(f"read failed ({_why(exc)})") from exc
        if chunk is None:
            continue  # the same, from a stream object that returns None for it
        if not chunk:
            break
        total += len(chunk)
        yield chunk
    if expected is not None and total < expected:
        raise StreamError(f"file shrank while being read ({total} of {expected} bytes)")


def _why(exc: OSError) -> str:
    """What went wrong, and for a lack of descriptors what to do about it."""
    return shortage(exc) or exc.strerror or str(exc)
