"""The process's open-file limit: fitting a run into it, and naming it when it runs out.

Almost every descriptor a run holds is a connection: one per worker and a few spare (see
send/client.py), and as many again when the embedded simulator, in the same process, accepts
them. The rest are few and opened as the run starts: the ledger and the simulator's store
(each with its WAL and shared memory), the outcome files, the run lock, an input file.
So a run that fits its connections into `ulimit -n` does not run out of descriptors,
and one that runs out anyway is told so, not that its disk may be full.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable

from wem_der.errors import ConfigError

# Descriptors besides the connections: standard streams, the ledger and the simulator's
# store, outcome files, the run lock, an input, the event loop's own, the temporary file of
# run.json or summary.json, and the modules and certificates read as the run starts.
OTHER_FILES = 64
_SHORT = frozenset({errno.EMFILE, errno.ENFILE})


def fit_concurrency(
    workers: int, *, spare: int, per_connection: int, on_note: Callable[[str], None]
) -> int:
    """How many of `workers` fit the open-file limit, which is raised towards the hard limit
    as far as they need; fewer workers, said in `on_note`, if it cannot be raised enough.

    Each worker holds a connection, `spare` more are kept for the token's refresh, and a
    connection costs `per_connection` descriptors (2 when this process also serves it).
    """
    need = (workers + spare) * per_connection + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return workers
    # The soft limit is there to be raised up to the hard one by a program that needs more.
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if raised > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft >= need:
        return workers
    # Past the hard limit: only root raises that one.
    raise_it = f"raise the limit to {need} (`ulimit -n {need}`; the hard limit is {hard})"
    fits = (soft - OTHER_FILES) // per_connection - spare
    if fits < 1:
        raise ConfigError(
            f"this process may have only {soft} files open (`ulimit -n`), too few for a run:"
            f" {raise_it}"
        )
    on_note(
        f"running {fits} workers, not {workers}: this process may have {soft} files open"
        f" (`ulimit -n`), and {workers} workers need about {need}; to run them all,"
        f" {raise_it}"
    )
    return fits


def shortage(exc: BaseException) -> str | None:
    """Why `exc` happened and what to do, if a lack of file descriptors caused it; else None.

    An OSError says so by its errno. SQLite's "unable to open database file" does not say
    why it could not, so for any other error a descriptor is asked for at once: if none
    can be had, that was the cause. Call it as soon as the error is caught, before the
    descriptors in use are let go.
    """
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        try:
            os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as probe:
            code = probe.errno
    if code not in _SHORT:
        return None
    if code == errno.ENFILE:
        return (
            "too many open files on this system (ENFILE: its table of open files is full);"
            " close files other programs hold, or raise the system's limit (fs.file-max)"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return "too many open files (EMFILE): close files, or lower --concurrency"
    return (
        f"too many open files (EMFILE): this process may have {soft} open (`ulimit -n`);"
        f" raise the limit (`ulimit -n {max(4096, 4 * soft)}`, say) or lower --concurrency"
    )
