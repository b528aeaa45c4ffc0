"""Standard output and error that cannot stop a run.

The log, the notes and the progress bar on stderr, and the closing table on stdout, only
describe a run; its record is the outcome files and the ledger. A full disk under a
redirected log, or a reader gone away (`wem-der submit ... 2>&1 | head`), makes every
write raise, which would stop a run half-way with a traceback nobody can read. So, as
Python's own logging does with a handler that fails, the run goes on: the first failure
is kept, what would have been written after it is counted and dropped, and the run's
summary says what the log is missing (`Hooks.lost_output`). A stream closed before the
process started (`2>&-`) is one that fails from the start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TextIO, cast


@dataclass(slots=True)
class Loss:
    """What one stream could not write: the first failure, and the lines dropped since."""

    failure: tuple[datetime, str] | None = None
    lines: int = 0

    def fail(self, reason: str) -> None:
        self.failure = (datetime.now(UTC), reason)

    def describe(self) -> str | None:
        if self.failure is None:
            return None
        at, reason = self.failure
        return f"{self.lines} lines not written from {at:%Y-%m-%dT%H:%M:%SZ}: {reason}"


class GuardedStream:
    """A text or binary stream whose `write` and `flush` never raise `OSError`; None is a
    stream closed from the start (Python's standard stream whose descriptor was closed)."""

    def __init__(self, stream: IO[Any] | None, loss: Loss) -> None:
        self._stream = stream
        self.loss = loss
        self._buffer: GuardedStream | None = None
        if stream is None:
            loss.fail("closed when the process started")

    def write(self, data: Any) -> int:
        if self.loss.failure is None and self._stream is not None:
            try:
                return int(self._stream.write(data))
            except OSError as exc:
                self._failed(exc)
        self.loss.lines += data.count("\n" if isinstance(data, str) else b"\n")
        return len(data)

    def flush(self) -> None:
        if self.loss.failure is None and self._stream is not None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    @property
    def buffer(self) -> GuardedStream:
        """The binary stream under a text one, guarded alike (structlog writes bytes to it)."""
        if self._buffer is None:
            raw = None if self._stream is None else self._stream.buffer  # type: ignore[attr-defined]
            self._buffer = GuardedStream(raw, self.loss)
        return self._buffer

    def __getattr__(self, name: str) -> Any:
        # fileno, encoding...: the stream's own.
        return getattr(self._stream, name)

    def _failed(self, exc: OSError) -> None:
        self.loss.fail(exc.strerror or type(exc).__name__)
        # What the stream still buffers would fail again when the interpreter flushes it
        # at exit, and turn the exit status into 120: send it to the null device instead.
        with suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())  # type: ignore[union-attr]
            finally:
                os.close(null)


@contextmanager
def guarded_output() -> Iterator[Loss]:
    """Guard `sys.stdout` and `sys.stderr` while the block runs; yields stderr's `Loss`,
    the one a run reports (stdout's losses only cost the closing table)."""
    stdout, stderr = sys.stdout, sys.stderr
    loss = Loss()
    sys.stdout = cast(TextIO, GuardedStream(stdout, Loss()))
    sys.stderr = cast(TextIO, GuardedStream(stderr, loss))
    try:
        yield loss
    finally:
        # What print() left buffered would otherwise be written by the interpreter's last
        # flush, where a failure turns the exit status into 120: flush it here, guarded.
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr
