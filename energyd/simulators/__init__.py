"""Simulated plant equipment for tests, benchmarks and the demo (loopback only)."""
