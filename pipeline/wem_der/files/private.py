"""Owner-only files and directories, written whole or appended in one piece.

Outcome files, `run.json`, the ledger and the run lock hold NMIs and AEMO's answers, so
every directory the tool creates is 0o700 and every file 0o600, whatever the umask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import orjson


def private_dir(path: Path) -> None:
    """Make the directory `path`, and each missing parent, readable by its owner only (0o700).

    `mkdir -p` would make the parents by the umask (0o755, or 0o777 under umask 0): a
    directory the tool creates is its owner's alone, whichever part of the path it is.
    Directories that exist are left as they are.
    """
    missing = [directory for directory in (path, *path.parents) if not directory.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def private_file(path: Path) -> None:
    """Create the file `path`, empty and readable by its owner only (0o600), unless it exists.

    For an SQLite database: made before SQLite opens it, it is born 0o600 whatever the
    umask, and SQLite gives its -wal and -shm files the mode of the database file. A file
    that exists is left as it is.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def write_json_atomic(path: Path, obj: object) -> None:
    """Write `obj` as indented JSON to `path` (mode 0o600): all of it or, on a crash, none."""
    write_atomic(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` (mode 0o600): all of it or, on a crash, none."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_all(fd: int, data: bytes) -> None:
    """Hand all of `data` to the OS before returning."""
    # One write() for a line on an O_APPEND descriptor lands in one piece; the loop only
    # matters if the OS takes part of it (a full disk), and then the rest follows.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
