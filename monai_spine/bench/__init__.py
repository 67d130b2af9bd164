"""Benchmarks: each ``scripts/bench_*.py`` is a thin command over one module of this package."""
