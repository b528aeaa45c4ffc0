"""Streaming records out of input files, each with its path and line.

Each input is read in chunks, so memory does not grow with its size; decode.py finds its
format and turns the chunks into items. Bad input never stops the run: a problem becomes
an item with an `error`, and a file whose bytes end early (it shrank, or a read failed)
gives way to the next file.

The reading and the splitting into records run in a worker thread, a batch of items at a
time, so a large input does not stall the event loop. Decoding a record's JSON is deferred
(`SourceItem.deferred`): it happens on the event loop when the record is first read,
at pre-flight as a rule, so a resumed run never pays it for the records it skips.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from itertools import islice
from typing import BinaryIO

from pipeline.decode import READ_SIZE, StreamError, items_from_chunks
from pipeline.errors import InputError
from pipeline.outcomes import SourceItem, SourceRef

STDIN = "-"
# AEMO takes at most 10 MB per request; a little room on top for whitespace and the
# `data` wrapper, since the exact request size is checked when the request is built.
MAX_ITEM_BYTES = 10 * 2**20 + 64 * 1024


def check_paths(paths: Sequence[str]) -> None:
    """Fail before any work starts if an input cannot be read at all."""
    if sum(path == STDIN for path in paths) > 1:
        raise InputError("'-' (standard input) is given more than once; it can be read once")
    for path in paths:
        if path == STDIN:
            continue
        try:
            # O_NONBLOCK: opening a named pipe must not wait here for its writer.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InputError(f"input file not found: {path}") from None
        except PermissionError:
            raise InputError(f"input file is not readable (permission denied): {path}") from None
        except OSError as exc:
            raise InputError(f"cannot open input file {path}: {exc.strerror}") from exc
        try:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        if is_dir:
            raise InputError(f"input path is a directory, not a file: {path}; name its files")


async def iter_items(
    paths: Sequence[str],
    *,
    stdin: BinaryIO | None = None,
    chunk_lines: int = 512,
    max_item_bytes: int = MAX_ITEM_BYTES,
) -> AsyncGenerator[SourceItem, None]:
    """Every JSON value in `paths`, in order, or the reason one could not be read.

    `-` reads `stdin` (default: the process's standard input, binary). Up to `chunk_lines`
    items are read and decoded per hop to the worker thread.
    """
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be at least 1, not {chunk_lines}")
    for path in paths:
        batches = _Batches(_path_items(path, stdin, max_item_bytes))
        try:
            while batch := await asyncio.to_thread(batches.take, chunk_lines):
                for item in batch:
                    yield item
        finally:
            batches.close()


class _Batches:
    """Items handed to a worker thread a batch at a time, one thread at a time."""

    def __init__(self, items: Generator[SourceItem, None, None]) -> None:
        self._items = items
        self._lock = threading.Lock()

    def take(self, size: int) -> list[SourceItem]:
        with self._lock:
            return list(islice(self._items, size))

    def close(self) -> None:
        # A cancelled caller can leave a worker thread mid-batch (perhaps waiting on an idle
        # pipe); rather than block the event loop on it, the generator is then left to close
        # its file when the thread lets go of it and it is collected.
        if self._lock.acquire(blocking=False):
            try:
                self._items.close()
            finally:
                self._lock.release()


def _path_items(path: str, stdin: BinaryIO | None, limit: int) -> Generator[SourceItem, None, None]:
    if path == STDIN:
        source = sys.stdin.buffer if stdin is None else stdin
        yield from items_from_chunks(path, _read(source, expected=None), limit)
        return
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with-block below
    except OSError as exc:
        # check_paths ran earlier, but the file may have gone since.
        yield SourceItem(SourceRef(path), error=f"cannot open file: {exc.strerror}")
        return
    with file:
        info = os.fstat(file.fileno())
        expected = info.st_size if stat.S_ISREG(info.st_mode) else None
        yield from items_from_chunks(path, _read(file, expected=expected), limit)


def _read(file: BinaryIO, *, expected: int | None) -> Iterator[bytes]:
    """Raw chunks; a regular file that ends short of its size at open shrank under us."""
    total = 0
    try:
        while chunk := file.read(READ_SIZE):
            total += len(chunk)
            yield chunk
    except OSError as exc:
        raise StreamError(f"read failed ({exc.strerror or exc})") from exc
    if expected is not None and total < expected:
        raise StreamError(f"file shrank while being read ({total} of {expected} bytes)")
