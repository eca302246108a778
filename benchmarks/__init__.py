"""Benchmarks (not tests, not in the wheel): each area module has `run(out_dir)` appending rows to
benchmarks/results/<area>.csv (`make bench`); `gpu_check` is `make gpu-check`."""
