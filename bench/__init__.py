"""Benchmarks: `alto bench NAME [--quick] [--json PATH]`."""
