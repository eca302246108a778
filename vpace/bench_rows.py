"""Benchmark rows as the library reads them: their CSV columns, the machine a row was measured on, and the
source checkout whose ``benchmarks/`` holds the benchmark code (it is not part of the wheel).

``benchmarks/`` writes the rows (``benchmarks/common.py``), ``vpace report`` shows the ones measured on this
machine, ``vpace bench`` runs the code when vpace runs from a source checkout. Imports nothing of vpace.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["CPU_DEVICE", "FIELDS", "machine", "source_checkout"]

FIELDS = ("kernel", "provider", "shape", "metric", "value", "device", "machine", "date")
CPU_DEVICE = "cpu"  # the ``device`` of a row measured on the CPU; a GPU row holds the GPU's name


def machine() -> str:
    """A short description of the host a row was measured on: CPU model and core count."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


def source_checkout() -> Path | None:
    """The repository root vpace runs from when it is a source checkout with ``benchmarks/``, else None."""
    root = Path(__file__).resolve().parents[1]
    found = (root / "pyproject.toml").is_file() and (root / "benchmarks" / "run.py").is_file()
    return root if found else None
