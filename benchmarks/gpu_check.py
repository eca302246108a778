"""`make gpu-check`: one command that checks and measures vpace on a GPU in a few minutes.

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
  5. clips/s of the pace-clip pipeline with 1/4/8/16 DataLoader workers from raw camera-like video and from
     the copies ``vpace prepare`` makes of it (``vpace.data.transcode``), next to the step's clips/s - only
     where ``import decord`` works (the copies also need PyAV); then S3D-G at 64 x 224 if time allows;
  6. appends the rows to ``benchmarks/results/{kernels,train,data}.csv`` (device = the GPU's name) and prints
     a summary table against the GPU goals (the README's "On a GPU").
It ends within ``DEADLINE_S`` (8 minutes) whatever happens: a part starts only if the time it needs is left
(else it is skipped, and the output says so), step 1's pytest gets at most what is left, and a watchdog that
fires at the deadline appends the rows measured so far, prints the summary, names the part it stopped and
what did not run, and exits. It exits non-zero on any wrong result (a failed or skipped CUDA test, a kernel
output off its reference, a non-finite loss), a part that crashed, or step 1 not finishing; missed
performance goals and skipped optional parts are reported, not failures.

Without CUDA (or with ``--cpu``) it says there is no GPU and runs every part at tiny sizes on the CPU: each
part imports, builds its inputs and checks its results (step 1 only collects the CUDA tests); nothing is
appended unless ``--results`` is given. ``tests/test_gpu_check.py`` runs that path.

Step 5 needs decord (and PyAV for the copies); docs/CONTRIBUTING.md says how to bring their wheels to a GPU
machine without a network.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python3 benchmarks/gpu_check.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.source_tree import ROOT, use_source_tree  # noqa: E402

CUDA_TEST_FILES = (
    "tests/test_pace_jitter.py", "tests/test_contrastive.py", "tests/test_cuda_smoke.py", "tests/test_aot.py")
CUDA_TESTS = "cuda and not slow"  # the pytest marker expression of step 1
TWO_GPUS = "needs 2 GPUs (tensors on cuda:1 while cuda:0 is current)"  # the one skip step 1 allows
CUDA_TESTS_S = 300  # step 1's own limit (about 2 min expected, mostly Triton compiles)
DEADLINE_S = 480.0  # the whole check, whatever happens
RESERVE_S = 15.0  # kept back from the parts for appending rows and the summary
# seconds a part needs on a GPU to be worth starting (estimates from its sizes; no GPU has timed them yet)
NEEDS_S = {"1": 60.0, "2": 40.0, "3": 60.0, "4": 90.0, "5": 120.0, "4b": 120.0}


def run_cuda_tests(checks, gpu: bool, limit_s: float = CUDA_TESTS_S) -> None:
    """Step 1. GPU: run the CUDA tests within ``limit_s``; every selected test must pass (a skip on a GPU is
    a failure). Dry run: collect them only; each file must contribute some."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", CUDA_TESTS, *CUDA_TEST_FILES]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd += [f"--junitxml={xml}", "-rs"] if gpu else ["--collect-only"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(limit_s, 1.0))
        except subprocess.TimeoutExpired as e:
            checks.fail(f"CUDA tests: not done after {limit_s:.0f} s:\n{str(e.stdout or '')[-3000:]}")
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
        n, bad, why = junit_counts(xml)
    skipped = [w for w in why if TWO_GPUS not in w]  # a multi-GPU test may skip on one GPU, nothing else
    if len(why) > len(skipped):
        print(f"  {len(why) - len(skipped)} skipped: {TWO_GPUS}")
    if proc.returncode != 0 or bad or skipped or n == 0:
        checks.fail(f"CUDA tests: {n} selected, {bad} failed or errored, {len(skipped)} skipped "
                    f"(exit {proc.returncode})")


def junit_counts(xml: Path) -> tuple[int, int, list[str]]:
    """(tests, failed or errored, the reason of each skip) of a pytest junit report."""
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return int(suite.get("tests", 0)), bad, [s.get("message", "") for s in suite.iter("skipped")]


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
    """(goal, target, measured, met) lines against the GPU goals, from this run's rows."""
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


def feed_rows(workers: tuple[int, ...], small: bool) -> list[dict]:
    """Step 5: clips/s of the pace-clip pipeline through a DataLoader with each number of ``workers``, from
    raw camera-like video (``benchmarks.videos``, as ``benchmarks/data.py`` measures it) and from the copies
    ``vpace prepare`` makes of it (``vpace.data.transcode``; needs PyAV, else said and skipped).
    ``small``: 2 short videos, batches of 2 (the dry run)."""
    from benchmarks import data
    from benchmarks.common import loader_rate
    from benchmarks.videos import write_camera_set
    from vpace.data import PaceClipDataset, VideoEntry, VideoIndex, collate_clips

    videos, frames, batch = (2, 40, 2) if small else (data.VIDEOS, data.FRAMES, 30)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw, codec = write_camera_set(Path(tmp), videos, "x264_default", frames)
        sources = {"raw": raw}
        try:
            sources["prepared"] = _prepare(raw, Path(tmp) / "prepared")
        except ImportError as e:
            print(f"  prepared copies skipped: {e}", flush=True)
        for kind, paths in sources.items():
            index = VideoIndex([VideoEntry(str(p), 0, "all") for p in paths], ["bench"], tmp)
            ds = PaceClipDataset(index, data.PACES, clip_len=data.CLIP_LEN,
                                 clips_per_video=data.CLIPS_PER_VIDEO, seed=0, epoch_size=100_000)
            shape = (f"{videos} videos {data.WIDTH}x{data.HEIGHT} {frames / data.FPS:.0f}s {codec} ({kind}) "
                     f"-> batch {batch}x{data.CLIPS_PER_VIDEO}x{data.CLIP_LEN}x128x171 paces {data.PACES}")
            for w in workers:
                items = loader_rate(ds, w, batch, collate_clips, reps=1 if small else 3)
                rows.append(dict(kernel="pace_clips", provider=f"{kind}/dataloader_{w}_workers", shape=shape,
                                 metric="clips/s", value=f"{items * data.CLIPS_PER_VIDEO:.1f}"))
                print(f"  {kind:8s} {w:2d} workers: {rows[-1]['value']} clips/s", flush=True)
    return rows


def _prepare(raw: list[Path], folder: Path) -> list[Path]:
    """The prepared copies of ``raw`` at the default settings (128 px short side, a keyframe every 16)."""
    try:
        import av  # noqa: F401  (the copies are encoded with PyAV)
    except ImportError as e:
        raise ImportError(f"PyAV is not importable ({e})") from None
    from vpace.data.transcode import TranscodeSettings, transcode_video

    outcomes = [transcode_video(str(p), str(folder / f"{p.stem}.mp4"), TranscodeSettings()) for p in raw]
    if bad := [o for o in outcomes if o.reason]:
        raise RuntimeError(f"{bad[0].source}: could not be prepared: {bad[0].reason}")
    return [Path(o.output) for o in outcomes]


@dataclass
class Part:
    """One step of the check: ``run(seconds it may take)`` returns rows for ``area`` (None: no rows)."""

    key: str  # its NEEDS_S entry
    title: str
    area: str | None
    run: Callable[[float], list[dict] | None]
    required: bool = False  # not running it (no time left) is a failure, not a skip
    skip: str | None = None  # why it cannot run on this machine


class Check:
    """One run of the check: the rows measured so far, so the deadline can still append and judge them."""

    def __init__(self, deadline_s: float, results: Path | None, gpu_name: str | None) -> None:
        from benchmarks.common import Checks

        self.t0, self.deadline_s = time.monotonic(), deadline_s
        self.results, self.gpu_name = results, gpu_name
        self.checks, self.rows = Checks(), {"kernels": [], "train": [], "data": []}
        self.current: Part | None = None
        self.pending: list[str] = []
        self._done = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        """Seconds the parts may still take (the deadline less what appending and the summary keep)."""
        return self.deadline_s - self.elapsed() - RESERVE_S

    def run(self, parts: list[Part]) -> None:
        """Each part in order, if it can run here and the time it needs is left; crashes are failures."""
        import torch

        self.pending = [p.title for p in parts]
        for part in parts:
            self.pending.pop(0)
            print(f"== {part.title} ({self.elapsed():.0f} s)", flush=True)
            if part.skip:
                print(f"  skipped: {part.skip}", flush=True)
                continue
            if self.left() < NEEDS_S[part.key]:
                why = (f"{max(self.left(), 0):.0f} s left before the {self.deadline_s:.0f} s deadline, it "
                       f"needs ~{NEEDS_S[part.key]:.0f} s")
                if part.required:
                    self.checks.fail(f"{part.title}: not run, {why}")
                print(f"  skipped: {why}", flush=True)
                continue
            self.current = part
            try:
                got = part.run(self.left())
            except Exception as e:  # noqa: BLE001 - a crashed part is a failed check; the others still run
                traceback.print_exc()
                self.checks.fail(f"{part.title}: {type(e).__name__}: {e}")
                got = []
            self.current = None
            if part.area:
                self.rows[part.area] += got or []
            torch.cuda.empty_cache()  # (a no-op without CUDA)

    def on_deadline(self) -> None:
        """The watchdog: stop at the deadline whatever a part is doing, keeping what was measured."""
        part = self.current
        print(f"== deadline: {self.deadline_s:.0f} s reached during {part.title if part else 'the summary'}; "
              f"not run: {', '.join(self.pending) or 'nothing'}", flush=True)
        if part is not None:
            (self.checks.fail if part.required else print)(f"{part.title}: stopped by the deadline")
        os._exit(self.finish())

    def finish(self) -> int:
        """Append the rows, print the summary; the exit code (once: the main thread or the watchdog)."""
        if not self._done.acquire(blocking=False):
            time.sleep(RESERVE_S)  # the other one is writing; it exits
            return 1
        print(f"== 6 results ({self.elapsed():.0f} s)", flush=True)
        rows = {area: list(r) for area, r in self.rows.items()}
        if self.results is not None:
            from benchmarks.common import append_rows

            for area, area_rows in rows.items():
                if area_rows:
                    append_rows(Path(self.results) / f"{area}.csv", area_rows)
                    print(f"  {len(area_rows)} rows appended to {Path(self.results) / f'{area}.csv'}")
        else:
            print(f"  {sum(map(len, rows.values()))} rows measured, none appended (dry run; --results DIR "
                  "keeps them)")
        what = f"on {self.gpu_name}" if self.gpu_name else "dry run on the CPU: tiny sizes, not GPU numbers"
        print(f"summary ({what}):")
        _print_table(summary(rows), ("goal", "target", "measured", "met"))
        for kind in ("raw", "prepared"):
            fed = [r for r in rows["data"]
                   if r["metric"] == "clips/s" and r["provider"].startswith(f"{kind}/")]
            if fed:
                step = _val(rows["train"], "fused_augment_channels_last", "clips_per_s")
                print(f"  DataLoader feed from {kind} video: "
                      f"{', '.join(r['provider'].split('/')[1] + ' ' + r['value'] for r in fed)} clips/s; "
                      f"the step consumes {step} clips/s")
        failures = self.checks.failures
        print(f"wrong results: {len(failures)}; {self.elapsed():.0f} s in all", flush=True)
        for f in failures:
            print(f"  - {f.splitlines()[0]}")
        return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="the no-GPU dry run even where CUDA is available")
    ap.add_argument("--results", type=Path, default=None,
                    help="append rows here (default: benchmarks/results on a GPU, nowhere in the dry run)")
    ap.add_argument("--deadline-s", type=float, default=DEADLINE_S,
                    help="the whole check ends within this many seconds (parts that do not fit are skipped)")
    ap.add_argument("--aot", action="store_true",
                    help="only compile what runs for sm_80 / sm_90 with this Python's Triton (no GPU needed) "
                         "and append those rows to RESULTS/kernels.csv (default benchmarks/results)")
    args = ap.parse_args(argv)
    print(f"vpace_kernels from the {use_source_tree()}", flush=True)
    import torch

    if args.aot:
        from benchmarks import kernels_contrastive, kernels_jitter
        from benchmarks.common import append_rows

        rows = kernels_jitter.aot_only_rows() + kernels_contrastive.aot_only_rows()
        append_rows((args.results or ROOT / "benchmarks" / "results") / "kernels.csv", rows)
        print(f"{len(rows)} AOT rows appended ({rows[0]['provider']})")
        return 0

    from benchmarks import kernels_contrastive, kernels_jitter, train_step

    gpu = torch.cuda.is_available() and not args.cpu
    device, small = ("cuda", False) if gpu else ("cpu", True)
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    else:
        why = "--cpu" if torch.cuda.is_available() else "CUDA is not available here"
        print(f"no GPU ({why}). Dry run: every part at tiny sizes on the CPU; nothing here is a GPU "
              "measurement.", flush=True)
    check = Check(args.deadline_s, args.results or (ROOT / "benchmarks" / "results" if gpu else None),
                  torch.cuda.get_device_name() if gpu else None)
    watchdog = threading.Timer(max(args.deadline_s - check.elapsed(), 0.0), check.on_deadline)
    watchdog.daemon = True
    watchdog.start()
    checks, no_decord = check.checks, _decord_missing()
    check.run([
        Part("1", "1 CUDA tests", None, lambda s: run_cuda_tests(checks, gpu, min(s, CUDA_TESTS_S)), True),
        Part("2", "2 pace-jitter", "kernels", lambda s: kernels_jitter.gpu_rows(device, checks, small)),
        Part("3", "3 contrastive loss", "kernels",
             lambda s: kernels_contrastive.gpu_rows(device, checks, small)),
        Part("4", "4 training step", "train",
             lambda s: train_step.gpu_rows(device, checks, "small" if small else "paper")),
        Part("5", "5 DataLoader feed rate, raw and prepared video", "data",
             lambda s: feed_rows((1, 2) if small else (1, 4, 8, 16), small),
             skip=no_decord and f"decord is not importable ({no_decord}); see this module's docstring"),
        Part("4b", "4b training step, S3D-G", "train", lambda s: train_step.gpu_rows(device, checks, "s3dg"),
             skip="not in the dry run" if small else None),
    ])
    watchdog.cancel()
    return check.finish()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
