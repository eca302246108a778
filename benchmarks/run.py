"""`make bench`: run every benchmark area (or those named on the command line) and append CSV rows."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

AREAS = ("data", "kernels_jitter", "kernels_contrastive", "train")


def main(argv: list[str]) -> int:
    out_dir = Path(__file__).parent / "results"
    areas = argv or list(AREAS)
    for area in areas:
        print(f"== benchmark {area}", flush=True)
        mod = importlib.import_module(f"benchmarks.{area}")
        mod.run(out_dir)
    print(f"rows appended under {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
