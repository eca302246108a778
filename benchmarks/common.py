"""Shared benchmark plumbing: one CSV schema for every area, one machine string, honest timing."""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

FIELDS = ("kernel", "provider", "shape", "metric", "value", "device", "machine", "date")


def machine() -> str:
    """A short description of where a row was measured (CPU model, cores, torch threads)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows (missing columns filled in) to a CSV with the shared header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    today = _dt.date.today().isoformat()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({"device": "cpu", "machine": machine(), "date": today, **r})


def time_it(fn: Callable[[], object], *, warmup: int = 1, repeat: int = 5) -> float:
    """Median wall time in seconds of `fn()` after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]
