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

    reason: str | None = None
    at: datetime | None = None
    lines: int = 0

    def fail(self, reason: str) -> None:
        self.reason = reason
        self.at = datetime.now(UTC)

    def describe(self) -> str | None:
        if self.reason is None or self.at is None:
            return None
        return f"{self.lines} lines not written from {self.at:%Y-%m-%dT%H:%M:%SZ}: {self.reason}"


class GuardedStream:
    """A text or binary stream whose `write` and `flush` never raise `OSError`."""

    def __init__(self, stream: IO[Any], loss: Loss) -> None:
        self._stream = stream
        self.loss = loss
        self._buffer: GuardedStream | None = None

    def write(self, data: Any) -> int:
        if self.loss.reason is None:
            try:
                return int(self._stream.write(data))
            except OSError as exc:
                self._failed(exc)
        self.loss.lines += data.count("\n" if isinstance(data, str) else b"\n")
        return len(data)

    def flush(self) -> None:
        if self.loss.reason is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    @property
    def buffer(self) -> GuardedStream:
        """The binary stream under a text one, guarded alike (structlog writes bytes to it)."""
        if self._buffer is None:
            self._buffer = GuardedStream(self._stream.buffer, self.loss)  # type: ignore[attr-defined]
        return self._buffer

    def __getattr__(self, name: str) -> Any:
        # isatty, fileno, encoding...: the stream's own.
        return getattr(self._stream, name)

    def _failed(self, exc: OSError) -> None:
        self.loss.fail(exc.strerror or type(exc).__name__)
        # What the stream still buffers would fail again when the interpreter flushes it
        # at exit, and turn the exit status into 120: send it to the null device instead.
        with suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)


@contextmanager
def guarded_output() -> Iterator[Loss]:
    """Guard `sys.stdout` and `sys.stderr` while the block runs; yields stderr's `Loss`."""
    stdout, stderr = sys.stdout, sys.stderr
    loss = Loss()
    with open(os.devnull, "w", encoding="utf-8") as null:
        sys.stdout = _guarded(stdout, Loss(), null)
        sys.stderr = _guarded(stderr, loss, null)
        try:
            yield loss
        finally:
            sys.stdout, sys.stderr = stdout, stderr


def _guarded(stream: TextIO | None, loss: Loss, null: TextIO) -> TextIO:
    # Python sets a standard stream whose descriptor was closed at start-up to None.
    if stream is None:
        loss.fail("closed when the process started")
        stream = null
    return cast(TextIO, GuardedStream(stream, loss))
