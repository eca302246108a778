"""Benchmarks (not tests): each module has `run(out_dir)` appending rows to benchmarks/results/<area>.csv."""
