"""`make gpu-check`: one command that checks and measures vpace on a GPU in a few minutes (issue 13).

On a bare GPU machine - its own python3 with torch, triton, torchvision, numpy, pyyaml, pytest; no Ray, decord
or PyAV, no network, vpace not installed - it runs from the source checkout and, in order:
  1. the CUDA tests (``pytest -m "cuda and not slow"`` on the kernel, objective, model and training-step
     tests): the compiled Triton kernels against their eager references;
  2. fused pace-jitter vs the per-frame torchvision reference and a batched eager version, 30 x 16 x 112
     (from 128x171) and 64 x 16 x 224 (from 256x340), fp32 and bf16 out: do_bench median + 20/80 quantiles,
     bytes moved, GB/s against the copy bandwidth measured in the same run (``kernels_jitter.gpu_rows``);
  3. contrastive loss fused vs eager, forward + backward, N = 4096 ... 65536, D = 128: time and peak memory
     (``kernels_contrastive.gpu_rows``);
  4. the real training step on in-memory uint8 frames: R(2+1)D 16 x 112 x 112, batch 30 x 2 clips, pace +
     same-context contrast, bf16 autocast, fused vs eager augment, channels_last_3d on/off (``train_step``);
  5. clips/s of the pace-clip pipeline with 1/4/8/16 DataLoader workers, next to the step's clips/s - only
     where ``import decord`` works (``data.feed_rows``); then S3D-G at 64 x 224 if the time budget allows;
  6. appends the rows to ``benchmarks/results/{kernels,train,data}.csv`` (device = the GPU's name) and prints
     a summary table against the goals of issue 13.
It exits non-zero on any wrong result (a failed or skipped CUDA test, a kernel output off its reference, a
non-finite loss) or a part that crashed; missed performance goals are reported, not failures.

Without CUDA (or with ``--cpu``) it says there is no GPU and runs every part at tiny sizes on the CPU: each
part imports, builds its inputs and checks its results (step 1 only collects the CUDA tests); nothing is
appended unless ``--results`` is given. ``tests/test_gpu_check.py`` runs that path.

decord2 is not on the GPU machines. Step 5 runs there if its wheel travels with the checkout: in the repo
root, ``echo /.whl/ >> .git/info/exclude``, then ``python3 -m pip download --no-deps --only-binary=:all:
--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64 -d .whl decord2==3.4.0`` (~27 MB), and on the GPU machine, before the check:
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export
PYTHONPATH=/tmp/site``. On a machine that is handed back afterwards, copy ``benchmarks/results/*.csv`` (the
new rows) off it in the same command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python3 benchmarks/gpu_check.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.source_tree import ROOT, use_source_tree  # noqa: E402

CUDA_TEST_FILES = ("tests/test_pace_jitter.py", "tests/test_contrastive.py", "tests/test_cuda_smoke.py")
CUDA_TESTS = "cuda and not slow"  # the pytest marker expression of step 1
CUDA_TESTS_S = 360  # step 1's limit (about 2 min expected, mostly Triton compiles): the check stays in 8 min
S3DG_NEEDS_S = 120  # S3D-G runs only if this much of the budget is left after steps 1-5


def run_cuda_tests(checks, gpu: bool) -> None:
    """Step 1. GPU: run the CUDA tests; every selected test must pass (a skip on a GPU is a failure).
    Dry run: collect them only; each file must contribute some."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", CUDA_TESTS, *CUDA_TEST_FILES]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd += [f"--junitxml={xml}", "-rs"] if gpu else ["--collect-only"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CUDA_TESTS_S)
        except subprocess.TimeoutExpired as e:
            checks.fail(f"CUDA tests: not done after {CUDA_TESTS_S} s:\n{str(e.stdout or '')[-3000:]}")
            return
        out = proc.stdout + proc.stderr
        if not gpu:
            missing = [f for f in CUDA_TEST_FILES if f"{f}::" not in out]
            print(f"  collected {out.count('::')} CUDA tests (not run: no GPU)")
            if proc.returncode != 0 or missing:
                checks.fail(f"CUDA tests: collection failed (exit {proc.returncode}; no CUDA tests in "
                            f"{missing}):\n{out[-3000:]}")
            return
        print(out[-1500:].rstrip())
        if not xml.is_file():
            checks.fail(f"CUDA tests: pytest wrote no report (exit {proc.returncode}):\n{out[-3000:]}")
            return
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n, bad, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "skipped"))
        bad += int(suite.get("errors", 0))
    if proc.returncode != 0 or bad or skipped or n == 0:
        checks.fail(f"CUDA tests: {n} selected, {bad} failed or errored, {skipped} skipped "
                    f"(exit {proc.returncode})")


def _decord_missing() -> str | None:
    from vpace.data.reader import import_decord

    try:
        import_decord()
    except ImportError as e:
        return str(e)
    return None


def _val(rows: list[dict], provider: str, metric: str, shape: str = "") -> float | None:
    for r in rows:
        if r["provider"] == provider and r["metric"] == metric and shape in r["shape"]:
            try:
                return float(r["value"])
            except ValueError:
                return None
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summary(rows: dict[str, list[dict]]) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, met) lines against issue 13's goals, from this run's rows."""
    k, t = rows.get("kernels", []), rows.get("train", [])
    at_least = lambda goal: (f">= {goal}", lambda v: v >= goal)  # noqa: E731
    jit = [r for r in k if r["kernel"] == "pace_jitter" and "out=fp32" in r["shape"]]
    lines = []
    for sh in sorted({r["shape"] for r in jit if r["provider"] == "triton_kernel"}):
        for what, metric, goal in (("pace-jitter vs per-frame reference", "speedup_vs_reference_x", 50),
                                   ("pace-jitter vs batched eager", "speedup_vs_eager_batched_x", 5),
                                   ("pace-jitter % of copy bandwidth", "pct_of_copy_bandwidth", 60)):
            lines.append((f"{what} ({sh})", *at_least(goal), _val(jit, "triton_kernel", metric, sh)))
    con, n8 = [r for r in k if r["kernel"] == "contrastive_loss"], "N=8192,D=128,fp32"
    lines += [
        (f"contrastive fused / eager time ({n8})", "<= 1.3", lambda v: v <= 1.3,
         _ratio(_val(con, "fused", "fwd_bwd_time_ms", n8), _val(con, "eager", "fwd_bwd_time_ms", n8))),
        (f"contrastive eager / fused peak memory ({n8})", *at_least(50),
         _ratio(_val(con, "eager", "peak_mb", n8), _val(con, "fused", "peak_mb", n8))),
        ("contrastive N=65536 fp32 runs (fused ms)", "runs", lambda v: True,
         _val(con, "fused", "fwd_bwd_time_ms", "N=65536,D=128,fp32"))]
    for suffix in ("_channels_last", ""):
        clips = [_val(t, f"{aug}_augment{suffix}", "clips_per_s") for aug in ("fused", "eager")]
        lines.append((f"train step fused / eager augment clips/s{suffix.replace('_', ' ')}", *at_least(1.2),
                      _ratio(*clips)))
    return [(what, target, "-" if v is None else f"{v:.3g}", "n/a" if v is None else "yes" if ok(v) else "NO")
            for what, target, ok, v in lines]


def _print_table(lines: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="the no-GPU dry run even where CUDA is available")
    ap.add_argument("--results", type=Path, default=None,
                    help="append rows here (default: benchmarks/results on a GPU, nowhere in the dry run)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="time budget; S3D-G runs only within it")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    print(f"vpace_kernels from the {use_source_tree()}", flush=True)
    import torch

    from benchmarks import data, kernels_contrastive, kernels_jitter, train_step
    from benchmarks.common import Checks, append_rows

    gpu = torch.cuda.is_available() and not args.cpu
    device, small = ("cuda", False) if gpu else ("cpu", True)
    results = args.results or (ROOT / "benchmarks" / "results" if gpu else None)
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    else:
        why = "--cpu" if torch.cuda.is_available() else "CUDA is not available here"
        print(f"no GPU ({why}). Dry run: every part at tiny sizes on the CPU; nothing here is a GPU "
              "measurement.", flush=True)
    checks, rows = Checks(), {"kernels": [], "train": [], "data": []}
    no_decord = _decord_missing()
    left = lambda: args.budget_s - (time.perf_counter() - t0)  # noqa: E731
    parts = [
        ("1 CUDA tests", None, lambda: run_cuda_tests(checks, gpu)),
        ("2 pace-jitter", "kernels", lambda: kernels_jitter.gpu_rows(device, checks, small)),
        ("3 contrastive loss", "kernels", lambda: kernels_contrastive.gpu_rows(device, checks, small)),
        ("4 training step", "train",
         lambda: train_step.gpu_rows(device, checks, "small" if small else "paper")),
        ("5 DataLoader feed rate", "data",
         lambda: [] if no_decord else data.feed_rows((1, 2) if small else (1, 4, 8, 16), small)),
        ("4b training step, S3D-G", "train",
         lambda: [] if small or left() < S3DG_NEEDS_S else train_step.gpu_rows(device, checks, "s3dg")),
    ]
    for name, area, part in parts:
        print(f"== {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
        try:
            got = part()
        except Exception as e:  # noqa: BLE001 - a crashed part is a failed check; the others still run
            traceback.print_exc()
            checks.fail(f"{name}: {type(e).__name__}: {e}")
            got = []
        if area:
            rows[area] += got or []
        if name.startswith("5") and no_decord:
            print(f"  skipped: decord is not importable ({no_decord}); see this module's docstring")
        if name.startswith("4b") and not got and not small:
            print(f"  skipped: {left():.0f} s of the {args.budget_s:.0f} s budget left")
        torch.cuda.empty_cache()  # (a no-op without CUDA)
    print(f"== 6 results ({time.perf_counter() - t0:.0f} s)")
    if results is not None:
        for area, area_rows in rows.items():
            if area_rows:
                append_rows(Path(results) / f"{area}.csv", area_rows)
                print(f"  {len(area_rows)} rows appended to {Path(results) / f'{area}.csv'}")
    else:
        n = sum(map(len, rows.values()))
        print(f"  {n} rows measured, none appended (dry run; --results DIR keeps them)")
    what = f"on {torch.cuda.get_device_name()}" if gpu else "dry run on the CPU: tiny sizes, not GPU numbers"
    print(f"summary ({what}):")
    _print_table(summary(rows), ("goal", "target", "measured", "met"))
    fed = [r for r in rows["data"] if r["metric"] == "clips/s"]
    if fed:
        step = _val(rows["train"], "fused_augment_channels_last", "clips_per_s")
        print(f"  DataLoader feed: {', '.join(r['provider'] + ' ' + r['value'] for r in fed)} clips/s; "
              f"the step consumes {step} clips/s")
    print(f"wrong results: {len(checks.failures)}; {time.perf_counter() - t0:.0f} s in all")
    for f in checks.failures:
        print(f"  - {f.splitlines()[0]}")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
