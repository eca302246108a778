"""Fused pace/jitter op: per-frame eager torchvision reference vs the fused CPU path (and Triton on a GPU).

Workload (issue 3): a batch of 30 clips x 16 output frames, 112x112 crops of frames decoded at 128x171,
uint8 in, random crop/flip per clip and ColorJitter(0.8, 0.8, 0.8, 0.2) with p=0.8 per frame
(``vpace.augment.sample_params``), Kinetics normalization, fp32 and bf16 out.

Providers: ``eager_reference`` (``pace_jitter_reference``: a Python loop over frames with
``torchvision.transforms.v2.functional``), ``fused_cpu`` (``backend="cpu"``: the C kernel of
``kernels/pace_jitter_cpu.py``, per-frame branches, threads over frames), ``fused_cpu_no_jitter`` (the same
kernel with ``center_params``, i.e. the eval transform: gather + crop + normalize), ``eager_vectorized``
(``backend="cpu_eager"``: the plain-torch fallback, frames grouped by op order), ``triton`` (CUDA only).
Every call allocates its output, as the op does. Time is recorded as wall time with torch's default threads
and as process CPU time (user + system, so page faults count) with one thread, the steadier number on a
shared machine; the 1-minute load average is recorded too. ``fused_cpu``'s first call (building the C
kernel, ~0.5 s, or loading it from the disk cache) is a separate metric.

Bytes moved per clip from/to memory (T output frames of h x w, F unique decoded frames, o = output bytes per
element; on top of any version, the OS zero-fills the fresh output's pages once, another 3*h*w*T*o):
  * floor (any implementation): read the unique frames' crops once + write the output = 3*h*w*(F + T*o).
  * Triton kernel: 3*h*w*(T + T*o) from DRAM: each output frame's crop is read by its own program (a slow-pace
    repeat is read again, usually from L2), pass 1 (gray mean) re-reads the same 3*h*w bytes from L1/L2.
  * fused CPU: the same 3*h*w*(T + T*o): each output frame's crop is read once into a per-thread float frame
    buffer (L2-resident, 12*h*w bytes), which pass 2 reads back; the output is written once.
  * eager reference: measured, not estimated - every aten op's tensor inputs + outputs are summed by a
    TorchDispatchMode over one clip (views count 0, in-place ops count their operands).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from benchmarks.common import append_rows

B, F, T, H, W, CROP = 30, 16, 16, 128, 171, 112
SHAPE = f"B={B} T={T} {CROP}x{CROP} from {H}x{W}"
MEAN, STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _inputs(device: str = "cpu", batch: int = B):
    from vpace.augment import sample_params

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch, F, H, W, 3), dtype=torch.uint8, generator=g).to(device)
    index_map = torch.arange(T).repeat(batch, 1).to(device)  # pace 1: every output frame is a unique frame
    return frames, index_map, sample_params(batch, T, H, W, crop=CROP, generator=g).to(device)


def _timed(fn, threads: int | None = None, repeat: int = 1) -> tuple[float, float]:
    """(best wall s, best process CPU s) of ``repeat`` calls; ``threads`` sets intra-op threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    walls, cpus = [], []
    try:
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    finally:
        torch.set_num_threads(saved)
    return min(walls), min(cpus)


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


def _cpu_rows(quick: bool = False) -> list[dict]:
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
    refs, expect = {}, {}  # per record: reference (wall, cpu 1 thread), reference output
    for rec, p in records.items():
        ref = lambda p=p: pace_jitter_reference(frames, index_map, p, MEAN, STD)  # noqa: E731
        refs[rec] = (_timed(ref, repeat=2)[0], _timed(ref, threads=1, repeat=3)[1])
        expect[rec] = ref()
        name = "eager_reference" + ("" if rec == "jitter" else "_no_jitter")
        rows += [_row(name, "wall_s", f"{refs[rec][0]:.4f}"),
                 _row(name, "cpu_s_1thread", f"{refs[rec][1]:.4f}")]
    fp32 = {"fp32": torch.float32}
    cases = [("fused_cpu", "cpu", "jitter", DTYPES), ("fused_cpu_no_jitter", "cpu", "no_jitter", fp32)]
    if not quick:
        cases.append(("eager_vectorized", "cpu_eager", "jitter", fp32))
    std = torch.tensor(STD).view(1, 3, 1, 1, 1)
    for name, backend, rec, dtypes in cases:  # each vs the reference on the same record
        ref_wall, ref_cpu = refs[rec]
        for tag, dt in dtypes.items():
            fn = lambda b=backend, d=dt, p=records[rec]: call(b, d, p)  # noqa: E731
            wall, _ = _timed(fn, repeat=3 if backend == "cpu" else 2)
            _, cpu = _timed(fn, threads=1, repeat=3 if backend == "cpu" else 2)
            err = ((fn().float() - expect[rec]) * std).abs().max().item()  # 0..1 pixel units
            name_tag = f"{name}_{tag}"
            rows += [_row(name_tag, "wall_s", f"{wall:.4f}"), _row(name_tag, "cpu_s_1thread", f"{cpu:.4f}"),
                     _row(name_tag, "speedup_vs_reference_wall_x", f"{ref_wall / wall:.2f}"),
                     _row(name_tag, "speedup_vs_reference_cpu_1thread_x", f"{ref_cpu / cpu:.2f}"),
                     _row(name_tag, "max_abs_err_vs_reference", f"{err:.2e}")]
    rows.append(_row("machine", "loadavg_1min", f"{os.getloadavg()[0]:.1f}"))
    return rows


def _gpu_rows() -> list[dict]:
    from vpace_kernels.pace_jitter import pace_jitter, pace_jitter_reference

    if not torch.cuda.is_available():
        return []
    frames, index_map, params = _inputs("cuda")
    dev = torch.cuda.get_device_name()
    ref_wall, _ = _timed(lambda: pace_jitter_reference(frames, index_map, params, MEAN, STD), repeat=2)
    rows = [_row("eager_reference", "wall_s", f"{ref_wall:.4f}", device=dev)]
    for tag, dt in DTYPES.items():
        fn = lambda d=dt: pace_jitter(frames, index_map, params, MEAN, STD, d)  # noqa: E731
        fn()
        wall, _ = _timed(fn, repeat=10)
        rows += [_row(f"triton_{tag}", "wall_s", f"{wall:.6f}", device=dev),
                 _row(f"triton_{tag}", "speedup_vs_reference_x", f"{ref_wall / wall:.1f}", device=dev)]
    return rows


def _aot_rows() -> list[dict]:
    from vpace_kernels.pace_jitter import aot_compile_configs

    rows = []
    for cfg, dt, res in aot_compile_configs(archs=(80, 90)):
        shape = f"BLOCK={cfg['BLOCK']} warps={cfg['num_warps']} out={str(dt).replace('torch.', '')}"
        for metric, value in (("registers", res.registers), ("spill_bytes", res.spill_bytes),
                              ("shared_bytes", res.shared)):
            rows.append(_row("triton_aot", metric, value, shape=shape,
                             device=f"sm_{res.arch} (ptxas, no GPU)"))
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
    return _cpu_rows(quick) + _gpu_rows() + _bytes_rows() + _aot_rows()


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
