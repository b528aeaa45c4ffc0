"""A run: the one place that wires settings, sending, the ledger and the outcome files together."""
