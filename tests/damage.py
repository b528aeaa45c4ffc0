"""Ways to damage a ledger file, for the tests that a damaged ledger is refused clearly."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def overwrite_with_garbage(path: Path) -> None:
    path.write_bytes(b"definitely not SQLite " * 200)


def tear_the_items_table(path: Path) -> None:
    """Overwrite the items table's root page; the schema and meta pages stay readable."""
    with closing(sqlite3.connect(path)) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'items'").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size : root * page_size] = b"\xab" * page_size
    path.write_bytes(bytes(data))
