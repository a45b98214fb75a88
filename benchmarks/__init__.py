"""Benchmarks: each module runs as a script (python benchmarks/NAME.py --help)."""
