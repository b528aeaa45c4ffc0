"""A store that survives a restart: the in-memory store, written behind to SQLite.

Reads are served from memory (loaded once at open), so the request path never reads the
file. Writes are executed at once inside an open transaction and committed shortly after,
in one commit for everything written meanwhile: a commit per request would hold up the
event loop on every request (docs/pitfalls.md, "SQLite from asyncio"). `close()` commits
what is left, so a clean stop loses nothing; a kill loses at most the last
`commit_delay_s` of writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson

from wem_der.files.private import private_file
from wem_der.simulator.store import IdKind, JsonObject, MemoryStore, Version

_SCHEMA = """
CREATE TABLE IF NOT EXISTS installation_versions (
    nmi TEXT NOT NULL,
    version INTEGER NOT NULL,
    record BLOB NOT NULL,
    exceptions BLOB NOT NULL,
    PRIMARY KEY (nmi, version)
);
CREATE TABLE IF NOT EXISTS nmi_records (nmi TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (kind TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteStore(MemoryStore):
    """`MemoryStore` plus a SQLite file holding records, history and id counters."""

    def __init__(self, path: Path, *, commit_delay_s: float = 0.05) -> None:
        super().__init__()
        self._commit_delay_s = commit_delay_s
        self._pending: asyncio.TimerHandle | None = None
        # Born 0o600, like the ledger: SQLite gives its -wal and -shm files the same mode.
        private_file(path)
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._load()

    def _load(self) -> None:
        rows = self._db.execute(
            "SELECT nmi, record, exceptions FROM installation_versions ORDER BY nmi, version"
        )
        for nmi, record, exceptions in rows:
            super().save_installation(nmi, Version(orjson.loads(record), orjson.loads(exceptions)))
        for nmi, record in self._db.execute("SELECT nmi, record FROM nmi_records"):
            super().save_nmi(nmi, orjson.loads(record))
        self._counters.update(self._db.execute("SELECT kind, value FROM counters"))

    def _written(self) -> None:
        # Called after each write: schedule one commit for the burst of writes now under
        # way; outside an event loop (scripts, tests of the store) commit at once.
        if self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._db.commit()
            return
        self._pending = loop.call_later(self._commit_delay_s, self._commit)

    def _commit(self) -> None:
        self._pending = None
        self._db.commit()

    def save_installation(self, nmi: str, version: Version) -> None:
        super().save_installation(nmi, version)
        self._db.execute(
            "INSERT INTO installation_versions VALUES (?, ?, ?, ?)",
            (
                nmi,
                len(self._versions[nmi]),
                orjson.dumps(version.record),
                orjson.dumps(version.exceptions),
            ),
        )
        self._written()

    def save_nmi(self, nmi: str, record: JsonObject) -> None:
        super().save_nmi(nmi, record)
        self._db.execute(
            "INSERT OR REPLACE INTO nmi_records VALUES (?, ?)", (nmi, orjson.dumps(record))
        )
        self._written()

    def next_id(self, kind: IdKind) -> int:
        value = super().next_id(kind)
        self._db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (kind, value))
        self._written()
        return value

    def clear(self) -> None:
        super().clear()
        for table in ("installation_versions", "nmi_records", "counters"):
            self._db.execute(f"DELETE FROM {table}")  # noqa: S608 -- fixed table names
        self._written()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._db.commit()
        self._db.close()
