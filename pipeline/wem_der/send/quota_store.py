"""Where the quota's log lives: this process, this host, or every host.

AEMO's quota belongs to the participant, not to a process: every request any job sends to
the register counts against it (docs/aemo-contract.md, "Limits and quota"). `QuotaLimiter`
(send/quota.py) queues a process's workers, throttles and pauses; a `QuotaLog` holds the
starts granted and decides each grant in one atomic step, so that any number of limiters
sharing a log never put more than the limit in a window between them:

    MemoryLog   this process only: the library's default
    SqliteLog   every process on this host: `quota.sqlite3` in the state directory, one
                BEGIN IMMEDIATE transaction per grant, so a holder killed at any instant
                leaves the log whole
    RedisLog    every host: one Lua script per grant on the Redis server's clock
                (send/quota_redis.py)

A grant must fit three windows, each decided by one look at the k-th newest start: the
quota's (fewer than `limit` starts in the last `window_s`), the per-second ceiling (fewer
than `burst` in the last `burst_window_s`) and the job's share (fewer than `share` of its
own starts in the last `window_s`). A start at t is in a window of w until t + w, so the
wait is exactly the time at which the k-th newest start leaves, as the limiter's sleep
expects. A 429 seen by any job pauses every job: `Ask.pause_s` carries it to the log.
"""

from __future__ import annotations

import math
import secrets
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import urlsplit, urlunsplit

from wem_der.errors import LedgerError
from wem_der.files.private import private_dir, private_file

QUOTA_FILE = "quota.sqlite3"
# What a shared store's URL may begin with (`--quota-store`).
STORE_SCHEMES = ("redis", "rediss")
# A grant that finds another process inside its transaction tries again this much later,
# on the event loop, rather than blocking the loop in SQLite's busy handler: a grant holds
# the lock for tens of microseconds.
BUSY_RETRY_S = 0.001


@dataclass(frozen=True, slots=True)
class Ask:
    """One grant asked for: the windows it must fit, and a pause to share (a 429's)."""

    limit: int
    window_s: float
    burst: int | None = None
    burst_window_s: float = 1.0
    share: int | None = None
    pause_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Taken:
    """The log's answer: `wait_s` 0.0 means granted and recorded; otherwise how long until
    a start may fit. `paused_s` > 0 means a shared pause holds every job that long."""

    wait_s: float
    paused_s: float = 0.0


class QuotaLog(Protocol):
    """A log of starts that grants atomically (see the module docstring)."""

    async def take(self, ask: Ask) -> Taken:
        """Record a start and return Taken(0.0) if it fits every window now, else the wait."""
        ...


def room_wait(
    now: float,
    ask: Ask,
    newest: Callable[[int], float | None],
    own_newest: Callable[[int], float | None],
) -> float:
    """0.0 if a start at `now` fits every window of `ask`, else the seconds until it does.

    `newest(k)` is the k-th newest start of every job in the log (None: fewer than k),
    `own_newest(k)` the k-th newest of this job's own.
    """
    wait = 0.0
    checks = (
        (newest, ask.limit, ask.window_s),
        (newest, ask.burst, ask.burst_window_s),
        (own_newest, ask.share, ask.window_s),
    )
    for nth, k, span_s in checks:
        if k is None:
            continue
        at = nth(k)
        # Full while the k-th newest is still inside: room opens when it leaves, at
        # at + span_s, the same sum the limiter sleeps until.
        if at is not None and at + span_s > now:
            wait = max(wait, at + span_s - now)
    return wait


class MemoryLog:
    """The log of one process: a deque of starts, oldest first."""

    __slots__ = ("_clock", "_paused_until", "_starts")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._starts: deque[float] = deque()
        self._paused_until = -math.inf

    async def take(self, ask: Ask) -> Taken:
        # No await: a grant here is atomic with the limiter's own bookkeeping.
        now = self._clock()
        if ask.pause_s > 0:
            self._paused_until = max(self._paused_until, now + ask.pause_s)
        if now < self._paused_until:
            return Taken(self._paused_until - now, self._paused_until - now)
        starts = self._starts
        while starts and starts[0] + ask.window_s <= now:
            starts.popleft()

        def newest(k: int) -> float | None:
            return starts[-k] if len(starts) >= k else None

        wait = room_wait(now, ask, newest, newest)
        if wait == 0.0:
            starts.append(now)
        return Taken(wait)


_SCHEMA = (
    # n numbers a key's starts 1, 2, ... and m an owner's: the k-th newest is one lookup by
    # primary key rather than a scan of the window. `at` grows with n, because the clock is
    # read inside the transaction that inserts.
    """CREATE TABLE IF NOT EXISTS starts (
        key TEXT NOT NULL,
        n INTEGER NOT NULL,
        at REAL NOT NULL,
        owner TEXT NOT NULL,
        m INTEGER NOT NULL,
        PRIMARY KEY (key, n)
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX IF NOT EXISTS starts_by_owner ON starts (key, owner, m)",
    "CREATE TABLE IF NOT EXISTS pauses (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
)
_NEWEST = "SELECT n, at FROM starts WHERE key = ? ORDER BY n DESC LIMIT 1"
_NTH = "SELECT at FROM starts WHERE key = ? AND n = ?"
_OWN_NEWEST = "SELECT m FROM starts WHERE key = ? AND owner = ? ORDER BY m DESC LIMIT 1"
_OWN_NTH = "SELECT at FROM starts WHERE key = ? AND owner = ? AND m = ?"
_INSERT = "INSERT INTO starts (key, n, at, owner, m) VALUES (?, ?, ?, ?, ?)"
# Starts that have left the longest window; only those older than the newest `limit` are
# looked at, which the primary key's order makes a short range.
_PRUNE = "DELETE FROM starts WHERE key = ? AND n < ? AND at <= ?"
_PAUSED = "SELECT until FROM pauses WHERE key = ?"
_PAUSE = """INSERT INTO pauses (key, until) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET until = max(until, excluded.until)"""
_FORGET = ("DELETE FROM starts WHERE key = ?", "DELETE FROM pauses WHERE key = ?")


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


class SqliteLog:
    """The log of every process on this host, in a SQLite file; `async with` opens it.

    `key` names the quota (participant and register), `owner` this job. The clock must be
    one every process shares and that never goes back: the default, `time.monotonic`, is
    the system's CLOCK_MONOTONIC. A log newer than the clock (the machine restarted, which
    starts that clock again) is forgotten.
    """

    def __init__(
        self,
        path: Path,
        *,
        key: str,
        owner: str,
        clock: Callable[[], float],
        open_timeout_s: float = 5.0,
    ) -> None:
        self.path = path
        self._key = key
        self._owner = owner
        self._clock = clock
        self._open_timeout_s = open_timeout_s
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        self._conn = self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> sqlite3.Connection:
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            # isolation_level=None: each grant issues its own BEGIN IMMEDIATE and COMMIT.
            conn = sqlite3.connect(self.path, timeout=self._open_timeout_s, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._unusable(exc) from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            # A commit survives kill -9 once it is in the OS's cache (WAL); only a power cut
            # could lose one, and the register's window does not outlive that either. So no
            # fsync: a grant never waits for the disk, nor does a checkpoint.
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
            # From now on a busy lock is answered at once (see BUSY_RETRY_S).
            conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise self._unusable(exc) from exc
        return conn

    def _unusable(self, exc: BaseException) -> LedgerError:
        return LedgerError(
            f"cannot use the quota log {self.path} ({exc}); check the permissions of"
            " --state-dir or move the file aside (it holds only the last period's requests)"
        )

    async def take(self, ask: Ask) -> Taken:
        conn = self._conn
        if conn is None:
            raise RuntimeError("SqliteLog used outside `async with`")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return Taken(BUSY_RETRY_S)
            raise self._unusable(exc) from exc
        try:
            taken = self._take(conn, ask)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise self._unusable(exc) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return taken

    def _take(self, conn: sqlite3.Connection, ask: Ask) -> Taken:
        key, owner = self._key, self._owner
        # Read under the write lock: grants are ordered by this time as by their number.
        now = self._clock()
        newest = conn.execute(_NEWEST, (key,)).fetchone()
        if newest is not None and newest[1] > now:
            for statement in _FORGET:
                conn.execute(statement, (key,))
            newest = None
        if ask.pause_s > 0:
            conn.execute(_PAUSE, (key, now + ask.pause_s))
        paused = conn.execute(_PAUSED, (key,)).fetchone()
        if paused is not None and now < paused[0]:
            return Taken(paused[0] - now, paused[0] - now)
        top = 0 if newest is None else newest[0]
        own = conn.execute(_OWN_NEWEST, (key, owner)).fetchone()
        own_top = 0 if own is None else own[0]

        def nth(k: int) -> float | None:
            row = conn.execute(_NTH, (key, top - k + 1)).fetchone() if top >= k else None
            return None if row is None else float(row[0])

        def own_nth(k: int) -> float | None:
            row = (
                conn.execute(_OWN_NTH, (key, owner, own_top - k + 1)).fetchone()
                if own_top >= k
                else None
            )
            return None if row is None else float(row[0])

        wait = room_wait(now, ask, nth, own_nth)
        if wait == 0.0:
            conn.execute(_INSERT, (key, top + 1, now, owner, own_top + 1))
            conn.execute(_PRUNE, (key, top + 1 - ask.limit, now - ask.window_s))
        return Taken(wait)


def shown_url(url: str) -> str:
    """A store's URL without its user name, password or query, for messages and run.json."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@asynccontextmanager
async def open_log(
    store: str | None,
    *,
    state_dir: Path,
    key: str,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    wait_s: float,
) -> AsyncIterator[QuotaLog]:
    """The log a run's limiter shares: `store` None for this host's (`quota.sqlite3` in
    `state_dir`), or a `redis://` URL; `key` names the quota (participant and register).
    A lost Redis is waited for up to `wait_s`, sleeping with `sleep`."""
    # Random, so that two jobs never share a name in the log.
    owner = secrets.token_hex(8)
    if store is None:
        async with SqliteLog(state_dir / QUOTA_FILE, key=key, owner=owner, clock=clock) as log:
            yield log
        return
    # Imported only when used: redis-py is not needed on one host.
    from wem_der.send.quota_redis import RedisLog

    async with RedisLog(
        store, key=key, owner=owner, clock=clock, sleep=sleep, wait_s=wait_s
    ) as redis_log:
        yield redis_log
