"""Benchmarks of wem-der: scripts, not tests. Run each with `python -m benchmarks.NAME`."""
