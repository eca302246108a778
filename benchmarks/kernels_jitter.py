"""Fused pace/jitter op: the per-frame torchvision reference vs the fused versions, on the CPU and the GPU.

Workload, the paper's batch: 30 clips x 16 output frames, 112x112 crops of frames decoded at 128x171,
uint8 in, random crop/flip per clip and ColorJitter(0.8, 0.8, 0.8, 0.2) with p=0.8 per frame
(``vpace.augment.sample_params``), Kinetics normalization, fp32 and bf16 out; on a GPU also 64 clips x 16
frames of 224x224 from 256x340 (S3D-G's input).

CPU providers (``cpu_rows``): ``eager_reference`` (``pace_jitter_reference``: a Python loop over frames with
``torchvision.transforms.v2.functional``), ``fused_cpu`` (``backend="cpu"``: the C kernel of
``kernels/pace_jitter_cpu.py``), ``fused_cpu_no_jitter`` (the same kernel with ``center_params``, i.e. the
eval transform), ``eager_vectorized`` (``backend="eager"``: batched torch, frames grouped by op order). Every
call allocates its output, as the op does. Time: process CPU time (user + system, so page faults count) with
one thread, the steady number on a shared machine; ``fused_cpu``'s first call (building the C kernel, ~0.5 s,
or loading it from the disk cache) is a separate metric.

GPU providers (``gpu_rows``, ``make gpu-check``): ``eager_reference`` (timed on ``REF_CLIPS`` clips and scaled
to the batch: it is a per-frame loop, linear in frames), ``eager_batched`` (``backend="eager"`` on the GPU),
``triton_op`` (``pace_jitter``: validation + launch) and ``triton_kernel`` (the launch alone, on validated
arguments), timed with ``triton.testing.do_bench`` (median, 20/80 quantiles), with bytes moved, achieved
GB/s and the fraction of the copy bandwidth measured in the same run.

Bytes moved per clip from/to memory (T output frames of h x w, F unique decoded frames, o = output bytes per
element; on top of any version, the OS zero-fills the fresh output's pages once, another 3*h*w*T*o):
  * floor (any implementation): read the unique frames' crops once + write the output = 3*h*w*(F + T*o).
    The GPU rows' achieved GB/s counts these bytes (what the op must move).
  * Triton kernel: 3*h*w*(T + T*o) from DRAM: each output frame's crop is read by its own programs (a
    slow-pace repeat is read again, usually from L2); the gray-sum launch before it reads the same 3*h*w
    bytes, which the second launch then mostly finds in L2 (50 MB on an H100 vs 18 MB of crops at 30 x 16).
  * fused CPU: the same 3*h*w*(T + T*o): each output frame's crop is read once into a per-thread float frame
    buffer (L2-resident, 12*h*w bytes), which pass 2 reads back; the output is written once.
  * eager reference: measured, not estimated - every aten op's tensor inputs + outputs are summed by a
    TorchDispatchMode over one clip (views count 0, in-place ops count their operands).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from benchmarks.common import (
    Checks,
    Timing,
    aot_rows,
    append_rows,
    bench,
    copy_bandwidth,
    device_label,
    timing_rows,
)
from vpace.config import KINETICS_MEAN, KINETICS_STD

B, F, T, H, W, CROP = 30, 16, 16, 128, 171, 112
SHAPE = f"B={B} T={T} {CROP}x{CROP} from {H}x{W}"
GPU_SHAPES = ((30, 16, 112, 128, 171), (64, 16, 224, 256, 340))  # (B, T, crop, H, W); F = T (pace 1)
SMALL_SHAPES = ((2, 4, 16, 20, 26),)  # the no-GPU dry run: every GPU step at a tiny size on the CPU
REF_CLIPS = 4  # clips the per-frame reference is timed on (GPU rows), then scaled to the batch
MEAN, STD = KINETICS_MEAN, KINETICS_STD
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _inputs(device: str = "cpu", batch: int = B, t: int = T, h: int = H, w: int = W, crop: int = CROP):
    from vpace.augment import sample_params

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch, t, h, w, 3), dtype=torch.uint8, generator=g).to(device)
    index_map = torch.arange(t).repeat(batch, 1).to(device)  # pace 1: every output frame is a unique frame
    return frames, index_map, sample_params(batch, t, h, w, crop=crop, generator=g)  # params stay on the CPU


def _first(params, n: int):
    """The record of the batch's first ``n`` clips."""
    return dataclasses.replace(params, crop_yx=params.crop_yx[:n], flip=params.flip[:n],
                               apply=params.apply[:n], factors=params.factors[:n], order=params.order[:n])


def _err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error in 0..1 pixel units (before normalization)."""
    std = torch.tensor(STD, device=out.device).view(1, 3, 1, 1, 1)
    return ((out.float() - ref.float()) * std).abs().max().item()


def _tol(dt: torch.dtype) -> float:
    """fp32: the tests' 1e-4; 16-bit: one rounding of a normalized value (|x| <= ~4.5) in 0..1 units."""
    return 1e-4 if dt == torch.float32 else torch.finfo(dt).eps * 4.5 * max(STD) + 1e-4


def eager_bytes_per_clip() -> int:
    """Bytes read + written by every aten op of the eager reference on one clip (see module docstring)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from vpace_kernels.pace_jitter import pace_jitter_reference

    def nbytes(xs) -> int:
        return sum(x.numel() * x.element_size() for x in xs if isinstance(x, torch.Tensor))

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            ins = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            inplace = func.overloadpacket.__name__.endswith("_")
            aliased = any(isinstance(o, torch.Tensor) and any(
                o.untyped_storage().data_ptr() == i.untyped_storage().data_ptr() for i in ins) for o in outs)
            if inplace or not aliased:
                Count.total += nbytes(ins) + nbytes(outs)
            return out

    frames, index_map, params = _inputs(batch=1)
    with Count():
        pace_jitter_reference(frames, index_map, params, MEAN, STD)
    return Count.total


def _row(provider: str, metric: str, value, shape: str = SHAPE, **kw) -> dict:
    return dict(kernel="pace_jitter", provider=provider, shape=shape, metric=metric, value=value, **kw)


def cpu_rows(quick: bool = False) -> list[dict]:
    """CPU time (1 thread) of the reference and the CPU versions, speed-ups and errors vs the reference."""
    from vpace.augment import center_params
    from vpace_kernels.pace_jitter import pace_jitter, pace_jitter_reference

    frames, index_map, params = _inputs()
    center = center_params(B, T, H, W, crop=CROP)
    call = lambda backend, dt, p=params: pace_jitter(frames, index_map, p, MEAN, STD, dt, backend=backend)  # noqa: E731
    t0 = time.perf_counter()
    for dt in DTYPES.values():
        call("cpu", dt)
    rows = [_row("fused_cpu", "first_call_s", f"{time.perf_counter() - t0:.2f}")]
    records = {"jitter": params, "no_jitter": center}
    refs, expect = {}, {}  # per record: reference timing, reference output
    for rec, p in records.items():
        ref = lambda p=p: pace_jitter_reference(frames, index_map, p, MEAN, STD)  # noqa: E731
        refs[rec] = bench(ref, threads=1, reps=3)
        expect[rec] = ref()
        rows += timing_rows(_row("eager_reference" + ("" if rec == "jitter" else "_no_jitter"), "", ""),
                            "cpu_s_1thread", refs[rec])
    fp32 = {"fp32": torch.float32}
    cases = [("fused_cpu", "cpu", "jitter", DTYPES), ("fused_cpu_no_jitter", "cpu", "no_jitter", fp32)]
    if not quick:
        cases.append(("eager_vectorized", "eager", "jitter", fp32))
    for name, backend, rec, dtypes in cases:  # each vs the reference on the same record
        for tag, dt in dtypes.items():
            fn = lambda b=backend, d=dt, p=records[rec]: call(b, d, p)  # noqa: E731
            t = bench(fn, threads=1, reps=3 if backend == "cpu" else 2)
            name_tag = f"{name}_{tag}"
            rows += timing_rows(_row(name_tag, "", ""), "cpu_s_1thread", t)
            speedup = refs[rec].median / t.median
            rows += [_row(name_tag, "speedup_vs_reference_cpu_1thread_x", f"{speedup:.2f}"),
                     _row(name_tag, "max_abs_err_vs_reference", f"{_err(fn(), expect[rec]):.2e}")]
    rows.append(_row("machine", "loadavg_1min", f"{os.getloadavg()[0]:.1f}"))
    return rows


def gpu_rows(device: str, checks: Checks, small: bool = False) -> list[dict]:
    """Step 2 of ``make gpu-check``: reference vs batched eager vs the fused op and kernel on ``device``, with
    bytes moved and achieved GB/s against the copy bandwidth; wrong outputs are recorded in ``checks``.
    ``small``: tiny shapes (the no-GPU dry run on the CPU, where the fused kernel is the C kernel)."""
    copy_gbps, copy_t = copy_bandwidth(device, 1 << 20 if small else 1 << 30)
    size = "1 MiB" if small else "1 GiB"
    rows = timing_rows(_row("copy", "", "", shape=f"{size} device-to-device"), "time_ms", copy_t, 1e3)
    rows.append(_row("copy", "GBps", f"{copy_gbps:.1f}", shape=f"{size} device-to-device"))
    for shape in SMALL_SHAPES if small else GPU_SHAPES:
        rows += _shape_rows(device, *shape, copy_gbps, checks, reps=1 if small else 5)
    return [{**r, "device": device_label(device)} for r in rows]


def _shape_rows(device, b, t, crop, h, w, copy_gbps: float, checks: Checks, reps: int) -> list[dict]:
    from functools import partial

    from vpace_kernels.pace_jitter import pace_jitter, pace_jitter_reference, pace_jitter_triton, pick_backend
    from vpace_kernels.pace_jitter_cpu import pace_jitter_cpu
    from vpace_kernels.pace_jitter_spec import validate

    shape = f"B={b} T={t} {crop}x{crop} from {h}x{w}"
    frames, index_map, p = _inputs(device, b, t, h, w, crop)
    n_ref = min(b, REF_CLIPS)
    reference = partial(pace_jitter_reference, frames[:n_ref], index_map[:n_ref], _first(p, n_ref), MEAN, STD)
    t_ref = bench(reference, device, budget_ms=100, reps=reps)
    t_ref = Timing(*(v * b / n_ref for v in (t_ref.median, t_ref.q20, t_ref.q80)), t_ref.n)
    rows = timing_rows(_row("eager_reference", "", "", shape=f"{shape} (timed on {n_ref} clips, scaled)"),
                       "time_ms", t_ref, 1e3)
    expect = reference()
    kernel = pace_jitter_triton if pick_backend(frames) == "triton" else pace_jitter_cpu
    for tag, dt in DTYPES.items():
        floor = b * 3 * crop * crop * (t + t * torch.finfo(dt).bits // 8)  # F = T unique frames + output
        calls = {"eager_batched": partial(pace_jitter, frames, index_map, p, MEAN, STD, dt, backend="eager"),
                 "triton_op": partial(pace_jitter, frames, index_map, p, MEAN, STD, dt),
                 "triton_kernel": partial(kernel, frames, index_map, p,
                                          *validate(frames, index_map, p, MEAN, STD, dt), dt)}
        fused = calls["triton_kernel"]()
        what = f"pace_jitter {shape} {tag}"
        checks.within(f"{what}: fused vs reference", _err(fused[:n_ref], expect), _tol(dt))
        checks.within(f"{what}: eager vs fused", _err(calls["eager_batched"](), fused), _tol(dt))
        times = {name: bench(fn, device, budget_ms=100, reps=reps) for name, fn in calls.items()}
        sh = f"{shape} out={tag}"
        for name, tm in times.items():
            rows += timing_rows(_row(name, "", "", shape=sh), "time_ms", tm, 1e3)
        k = times["triton_kernel"].median
        gbps = floor / k / 1e9
        rows += [_row("triton_kernel", metric, value, shape=sh) for metric, value in (
            ("bytes_floor", floor), ("GBps", f"{gbps:.1f}"),
            ("pct_of_copy_bandwidth", f"{100 * gbps / copy_gbps:.1f}"),
            ("speedup_vs_reference_x", f"{t_ref.median / k:.1f}"),
            ("speedup_vs_eager_batched_x", f"{times['eager_batched'].median / k:.1f}"))]
    return rows


def _bytes_rows() -> list[dict]:
    px = CROP * CROP * 3
    shape = f"per clip: T={T} F={F} {CROP}x{CROP}"
    rows = [_row("eager_reference", "bytes_per_clip", eager_bytes_per_clip(), shape=shape)]
    for tag, o in (("fp32", 4), ("bf16", 2)):
        rows += [_row(f"floor_{tag}", "bytes_per_clip", px * (F + T * o), shape=shape),
                 _row(f"triton_{tag}", "bytes_per_clip", px * T * (1 + o), shape=shape),
                 _row(f"fused_cpu_{tag}", "bytes_per_clip", px * T * (1 + o), shape=shape)]
    return rows


def measure(quick: bool = False) -> list[dict]:
    """All rows: CPU timings, GPU timings (if CUDA), bytes per clip and AOT registers/spills."""
    checks = Checks()
    gpu = gpu_rows("cuda", checks) if torch.cuda.is_available() else []
    if checks.failures:
        raise RuntimeError("pace_jitter: wrong GPU results: " + "; ".join(checks.failures))
    return cpu_rows(quick) + gpu + _bytes_rows() + aot_only_rows()


def aot_only_rows() -> list[dict]:
    """What runs, compiled ahead of time for sm_80 / sm_90 (``benchmarks.common.aot_rows``)."""
    from vpace_kernels.pace_jitter import shipped_launches

    return aot_rows("pace_jitter", shipped_launches)


def print_table(rows: list[dict] | None = None, quick: bool = True) -> None:
    """Print rows as an aligned table (for ``vpace bench kernels``); measures first if ``rows`` is None."""
    rows = measure(quick) if rows is None else rows
    cols = ("provider", "shape", "metric", "value", "device")
    table = [cols] + [tuple(str(r.get(c, "cpu")) for c in cols) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def run(out_dir: Path) -> None:
    """Append all rows to ``out_dir/kernels.csv`` and print them."""
    rows = measure()
    append_rows(Path(out_dir) / "kernels.csv", rows)
    print_table(rows)


if __name__ == "__main__":
    run(Path(__file__).parent / "results")
