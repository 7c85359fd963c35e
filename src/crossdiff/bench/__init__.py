"""Benchmarks run by ``crossdiff bench NAME``; each prints its parameters and the machine."""
