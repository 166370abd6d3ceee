"""Benchmarks; results in PERFORMANCE.md."""
