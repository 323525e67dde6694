"""Benchmark scripts that time this zoo's code against the official code: `python -m benchmarks.NAME --help`."""
