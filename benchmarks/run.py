"""`make bench`: run every benchmark area (or those named on the command line) and append CSV rows."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from benchmarks.source_tree import use_source_tree

AREAS = ("data", "kernels_jitter", "kernels_contrastive", "train", "ingest")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument("areas", nargs="*", metavar="AREA",
                    help=f"areas to run (default: all): {', '.join(AREAS)}")
    areas = ap.parse_args(argv).areas or list(AREAS)
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        ap.error(f"unknown area(s) {', '.join(unknown)}; valid: {', '.join(AREAS)}")
    use_source_tree()
    out_dir = Path(__file__).parent / "results"
    for area in areas:
        print(f"== benchmark {area}", flush=True)
        mod = importlib.import_module(f"benchmarks.{area}")
        mod.run(out_dir)
    print(f"rows appended under {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
