"""Reading: records streamed out of files (JSONL, JSON arrays, gzip, stdin), with path and line."""
