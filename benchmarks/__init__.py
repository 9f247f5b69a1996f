"""Benchmark scripts: run them as scripts (`make bench`); each owns one section of BENCHMARKS.md."""
