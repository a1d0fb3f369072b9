"""Benchmarks for arcp_trio against the reference runtime (see README.md)."""
