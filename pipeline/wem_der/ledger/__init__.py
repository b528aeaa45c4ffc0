"""The durable record of a run: the SQLite ledger and the outcome files."""
