"""Reports: what a run did, from the ledger."""
