"""One process per run: an exclusive lock on the outcome directory while a run is live.

Without it, `wem-der resume RUN` typed while RUN is still sending would send the same
records from two processes. `flock` is released by the kernel when its holder dies, even
by kill -9, so a crashed run never leaves a stale lock behind (unlike a pid file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from wem_der.errors import ConfigError
from wem_der.files.private import private_dir

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold the lock of `out_dir` for the block; ConfigError if another process holds it."""
    try:
        private_dir(out_dir)
        fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot use the outcome directory {out_dir}: {exc.strerror}; check its permissions"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"the outcome directory {out_dir} is in use by a run live in another process"
                " (its run.json names it); let it finish or stop it, or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
