"""The ledger's file format: tables, the statements that use them, and opening a file as a
ledger (checked, created). The SQL runs in the ledger's batches (see ledger/batch.py);
nothing here touches asyncio. What the reads return is in ledger/rows.py.

    runs      one row per invocation: status, inputs, settings (no secrets), summary
    records   one row per (kind, nmi): does it exist at the register, and the content hash,
              run and transaction of its last accepted or conditional submission
    attempts  one row per HTTP attempt, written before the request leaves; `finished_at`
              NULL means no answer was recorded, `settled` 0 means the record's final
              outcome was not recorded yet
    items     the final outcome of each input record of a run, with its outcome-file line
    meta      schema_version
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from wem_der.errors import LedgerError
from wem_der.files.limits import shortage
from wem_der.files.private import private_dir, private_file

SCHEMA_VERSION = 1

# Plain statements, not executescript(): executescript() commits first, and the schema is
# created inside the BEGIN IMMEDIATE that also checks it, so two runs opening a new file
# at once cannot both create it.
DDL = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL
            CHECK (status IN ('running', 'finished', 'aborted', 'interrupted')),
        kind TEXT NOT NULL,
        out_dir TEXT NOT NULL,
        inputs_json TEXT NOT NULL,
        settings_json TEXT NOT NULL,
        parent_run_id TEXT,
        summary_json TEXT
    )""",
    "CREATE INDEX runs_by_created ON runs (created_at)",
    """CREATE TABLE records (
        kind TEXT NOT NULL,
        nmi TEXT NOT NULL,
        exists_at_register INTEGER,
        last_success_hash TEXT,
        last_success_run TEXT,
        last_success_txn TEXT,
        last_success_at REAL,
        PRIMARY KEY (kind, nmi)
    ) WITHOUT ROWID""",
    """CREATE TABLE attempts (
        attempt_id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        nmi TEXT NOT NULL,
        action TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        http_status INTEGER,
        transaction_id TEXT,
        settled INTEGER NOT NULL DEFAULT 0
    )""",
    # Partial: only attempts whose record has no final outcome yet, so the index stays
    # tiny and "what was in flight in run X" never reads the run's settled attempts.
    "CREATE INDEX attempts_unsettled ON attempts (run_id, seq) WHERE settled = 0",
    "CREATE INDEX attempts_by_key ON attempts (kind, nmi)",
    # A rowid table with a unique (run_id, seq) index rather than WITHOUT ROWID: each row
    # carries a ~0.5 kB outcome line, and WITHOUT ROWID suits rows under ~1/20 of a page
    # (sqlite.org/withoutrowid.html); the narrow index orders a run's pages by seq.
    """CREATE TABLE items (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        nmi TEXT,
        outcome TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        line BLOB NOT NULL
    )""",
    "CREATE UNIQUE INDEX items_by_run ON items (run_id, seq)",
    "CREATE INDEX items_by_key ON items (kind, nmi)",
)


# Statements, in the order of the API that uses them (ledger/store.py).

# A run_id seen again is that run resuming: it is running again, and its settings are now
# those of the resuming invocation.
START_RUN = """INSERT INTO runs (run_id, created_at, status, kind, out_dir, inputs_json,
    settings_json, parent_run_id) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)
    ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL,
    summary_json = NULL, settings_json = excluded.settings_json"""
FINISH_RUN = "UPDATE runs SET status = ?, finished_at = ?, summary_json = ? WHERE run_id = ?"
# Every query of runs reads the columns `ledger_rows.run_row` takes by position, in order.
_RUNS_WHERE = """SELECT run_id, kind, status, created_at, finished_at, out_dir, inputs_json,
    settings_json, parent_run_id, summary_json FROM runs WHERE {where}"""
GET_RUN = _RUNS_WHERE.format(where="run_id = ?")
LOOKUP = """SELECT exists_at_register, last_success_hash, last_success_run, last_success_txn,
    last_success_at FROM records WHERE kind = ? AND nmi = ?"""
# The runs of an NMI's two latest pre-flighted lines recorded by runs other than the asking
# one, newest first (a row's rowid grows with the time it was recorded): two of one run
# mean the NMI held several lines of that run's input.
LATEST_LINE_RUNS = """SELECT run_id FROM items WHERE kind = ? AND nmi = ? AND run_id != ?
    AND outcome != 'invalid' ORDER BY rowid DESC LIMIT 2"""
# A run's outcome lines of an NMI that reached the register, newest first.
SENT_LINES = """SELECT line FROM items WHERE kind = ? AND nmi = ? AND run_id = ?
    AND outcome IN ('accepted', 'conditional') ORDER BY rowid DESC"""
BEGIN_ATTEMPT = """INSERT INTO attempts (run_id, seq, kind, nmi, action, content_hash,
    started_at) VALUES (?, ?, ?, ?, ?, ?, ?)"""
FINISH_ATTEMPT = """UPDATE attempts SET finished_at = ?, http_status = ?, transaction_id = ?
    WHERE attempt_id = ?"""
SET_EXISTS = """INSERT INTO records (kind, nmi, exists_at_register) VALUES (?, ?, ?)
    ON CONFLICT (kind, nmi) DO UPDATE SET exists_at_register = excluded.exists_at_register"""
UPSERT_ITEM = """INSERT INTO items (run_id, seq, kind, nmi, outcome, recorded_at, line)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, seq) DO UPDATE SET kind = excluded.kind,
    nmi = excluded.nmi, outcome = excluded.outcome, recorded_at = excluded.recorded_at,
    line = excluded.line"""
SETTLE = "UPDATE attempts SET settled = 1 WHERE run_id = ? AND seq = ? AND settled = 0"
RECORD_SUCCESS = """INSERT INTO records (kind, nmi, exists_at_register, last_success_hash,
    last_success_run, last_success_txn, last_success_at) VALUES (?, ?, 1, ?, ?, ?, ?)
    ON CONFLICT (kind, nmi) DO UPDATE SET exists_at_register = 1,
    last_success_hash = excluded.last_success_hash, last_success_run = excluded.last_success_run,
    last_success_txn = excluded.last_success_txn, last_success_at = excluded.last_success_at"""
IN_FLIGHT = """SELECT seq, attempt_id, kind, nmi, action, content_hash, started_at, finished_at,
    http_status, transaction_id FROM attempts WHERE run_id = ? AND settled = 0
    ORDER BY seq, attempt_id"""
ITEMS_PAGE = """SELECT seq, kind, nmi, outcome, line FROM items
    WHERE run_id = ? AND seq > ?{filter} ORDER BY seq LIMIT ?"""
HISTORY = """SELECT run_id, seq, started_at, 0, attempt_id, action, http_status, transaction_id,
    content_hash, NULL FROM attempts WHERE kind = ? AND nmi = ?
    UNION ALL SELECT run_id, seq, recorded_at, 1, 0, NULL, NULL, NULL, NULL, line
    FROM items WHERE kind = ? AND nmi = ? ORDER BY 3, 4, 5"""
OUTCOME_COUNTS = "SELECT outcome, COUNT(*) FROM items WHERE run_id = ? GROUP BY outcome"
ITEM_KEYS = "SELECT seq, nmi FROM items WHERE run_id = ?{filter}"
# For reports only: a scan of `attempts`, rather than an index that every write would pay.
ATTEMPT_TIMES = """SELECT COALESCE(finished_at, started_at) AS at FROM attempts
    WHERE run_id = ? ORDER BY at"""
ATTEMPT_TIMES_ANSWERED = """SELECT finished_at AS at FROM attempts
    WHERE run_id = ? AND http_status = ? ORDER BY at"""
# A run's finished write attempts by answer (NULL: none came), for a resumed run's summary.
ATTEMPT_STATUSES = """SELECT http_status, COUNT(*) FROM attempts
    WHERE run_id = ? AND finished_at IS NOT NULL GROUP BY 1"""
CHILD_RUNS = _RUNS_WHERE.format(where="parent_run_id = ? ORDER BY created_at")


def unusable(path: Path, reason: BaseException | str) -> LedgerError:
    if isinstance(reason, BaseException) and (why := shortage(reason)) is not None:
        # The file may be fine: it is the process that could not open one more.
        return LedgerError(f"cannot open the ledger {path} ({reason}): {why}")
    return LedgerError(
        f"{path} is not a usable ledger: {reason}; move it aside or point --state-dir elsewhere"
    )


def locked(path: Path, busy_timeout_s: float) -> LedgerError:
    return LedgerError(
        f"{path} is locked by another wem-der run (waited {busy_timeout_s:g} s); "
        "let that run finish or point --state-dir elsewhere"
    )


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes included (the low byte is the primary)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def open_ledger(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """Open the ledger at `path`, creating it if new; raise LedgerError if it is unusable."""
    try:
        # By default the state directory is `.wem-der/<register>`: `.wem-der` too must not be
        # open to others to list or replace.
        private_dir(path.parent)
        # Create the file before SQLite does so that it is born 0o600: SQLite then gives
        # the -wal and -shm files the database file's permissions.
        private_file(path)
    except OSError as exc:
        why = shortage(exc) or "check the permissions of --state-dir or point it elsewhere"
        raise LedgerError(f"cannot create the ledger {path}: {exc.strerror}; {why}") from exc
    try:
        # isolation_level=None: the ledger's batches issue BEGIN and COMMIT themselves.
        # check_same_thread=False: the ledger opens and closes it in its thread and runs
        # batches on the event loop's, never two at once.
        conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise unusable(path, exc) from exc
    try:
        _prepare_when_free(conn, path, busy_timeout_s)
    except sqlite3.Error as exc:
        # Made before the file is closed, which would free the descriptor it lacked.
        error = locked(path, busy_timeout_s) if is_busy(exc) else unusable(path, exc)
        conn.close()
        raise error from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare_when_free(conn: sqlite3.Connection, path: Path, busy_timeout_s: float) -> None:
    """`_prepare`, tried again while another process holds the file, up to busy_timeout_s.

    SQLite answers SQLITE_BUSY at once, without its busy handler, where waiting could
    deadlock: two processes opening a new ledger together both switch it to WAL, and one
    of them is refused. Runs in the ledger's thread, so the short sleeps block no loop.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            _prepare(conn, path)
            return
        except sqlite3.Error as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        time.sleep(0.05)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    # quick_check reads every page but skips the index cross-checks of integrity_check:
    # it is what finds a torn or overwritten file before a run trusts it.
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        # One row can hold hundreds of lines; the count and the first say enough.
        lines = [line for row in problems for line in row.splitlines() if line[:3] != "***"]
        found = lines or problems
        raise unusable(path, f"quick_check found {len(found)} problem(s), first {found[0]!r}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise unusable(path, f"SQLite cannot use write-ahead logging here (got {mode!r})")
    # WAL + NORMAL: a commit survives the process being killed, not a power cut
    # (sqlite.org/pragma.html#pragma_synchronous), and costs no fsync per batch.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        _check_schema(conn, path)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if "meta" not in tables:
        if tables:
            raise unusable(path, "it is an SQLite database of another program")
        for statement in DDL:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        return
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = row[0] if row else None
    if not (isinstance(version, str) and version.isdigit()):
        raise unusable(path, f"its schema_version is {version!r}")
    if int(version) > SCHEMA_VERSION:
        raise LedgerError(
            f"{path} was written by a newer wem-der (ledger schema {version}, this version "
            f"reads up to {SCHEMA_VERSION}); upgrade wem-der or point --state-dir elsewhere"
        )
    # Schema 1 is the first; a migration from an older version goes here when one exists.
    if int(version) < SCHEMA_VERSION:
        raise unusable(path, f"ledger schema {version} is unknown")
