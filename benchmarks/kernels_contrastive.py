"""Contrastive loss: the eager full-logits reference vs the chunked CPU path and the fused Triton kernels.

Workload: SimCLR-style symmetric loss, ``q = k = cat(z1, z2)`` (N rows, D = 128, labels = video ids, so each
row has one positive), forward + backward.

CPU (``cpu_rows``): process CPU time with one thread (``benchmarks.common.bench``; the steady number on a
shared machine: under oversubscription OpenMP barriers stall the chunked path's many mid-size tile ops far
more than eager's few huge ops). Peak extra memory: tracemalloc does not see torch's CPU allocations, and RSS
growth is blurred by glibc's allocator reuse. So we replay the exact allocation stream of torch's CPU
allocator recorded by ``torch.profiler`` (``profile_memory=True``): every allocation/free event with its size,
sorted by time; the running sum's maximum is the peak of bytes live beyond what existed before the call
(inputs excluded, the gradient and everything autograd saves included), measured in a separate, untimed run.

GPU (``gpu_rows``, ``make gpu-check``): fused (Triton) vs eager forward + backward at N = 4096 ... 65536 in
fp32 and bf16, timed with ``triton.testing.do_bench``; peak memory is ``torch.cuda.max_memory_allocated``
above what was allocated before the call. Eager rows that do not fit in the GPU's memory say so.

What runs is also compiled ahead of time for sm_80 and sm_90 (``benchmarks.common.aot_rows``: the launches
forward + backward make for the shipped D, with the JIT's specialisation): registers and spill bytes from
``ptxas -v``, shared memory, wgmma or not and resident blocks per SM.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import Checks, aot_rows, append_rows, bench, device_label, timing_rows

SHAPES = (1024, 4096, 8192)
GPU_SHAPES = (4096, 8192, 16384, 65536)
SMALL_SHAPES = (64, 96)  # the no-GPU dry run of the GPU step, on the CPU
DIM = 128
PROVIDERS = {"eager": "eager", "chunked_cpu": "chunked"}


def _inputs(n: int, d: int = DIM, device: str = "cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g).to(device, dtype).requires_grad_()
    labels = torch.arange(n // 2).repeat(2).to(device)  # two views per video
    return z, labels


def _step(z: torch.Tensor, labels: torch.Tensor, backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward; returns (loss, dz)."""
    from vpace_kernels.contrastive import contrastive_loss

    loss = contrastive_loss(z, z, labels, backend=backend)
    loss.backward()
    grad, z.grad = z.grad, None
    return loss.detach(), grad


def peak_extra_bytes(fn) -> int:
    """Peak bytes allocated by torch's CPU allocator during ``fn()`` beyond those live before it."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation:
            events.append((node.start_time_ns, node.typed[1].alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def _cpu_rows() -> list[dict]:
    rows = []
    for n in SHAPES:
        z, labels = _inputs(n)
        shape = f"N={n},D={DIM}"
        res = {}
        for provider, backend in PROVIDERS.items():
            step = partial(_step, z, labels, backend)
            t = bench(step, threads=1, reps=3)
            res[provider] = (t.median, peak_extra_bytes(step))
            row = dict(kernel="contrastive_loss", provider=provider, shape=shape)
            rows += timing_rows(row, "fwd_bwd_cpu_s_1thread", t)
            rows.append({**row, "metric": "peak_extra_mb", "value": f"{res[provider][1] / 2**20:.4f}"})
        (ce, me), (cc, mc) = res["eager"], res["chunked_cpu"]
        for metric, value in (("mem_reduction_vs_eager_x", me / max(mc, 1)),
                              ("cpu_1thread_vs_eager_x", cc / ce), ("loadavg_1min", os.getloadavg()[0])):
            rows.append(dict(kernel="contrastive_loss", provider="chunked_cpu", shape=shape, metric=metric,
                             value=f"{value:.3f}"))
        print(f"contrastive {shape}: eager {ce:.2f}s cpu(1t) {me / 2**20:.1f}MB | chunked {cc:.2f}s cpu(1t) "
              f"{mc / 2**20:.1f}MB -> {me / max(mc, 1):.0f}x less memory, {cc / ce:.2f}x cpu(1t); "
              f"load avg {os.getloadavg()[0]:.1f}", flush=True)
    return rows


def _peak_bytes(fn, device: str) -> int | None:
    """Peak bytes allocated during ``fn()`` beyond those live before it, on a CUDA ``device`` (None on a CPU:
    the dry run skips the profiler replay of ``peak_extra_bytes``)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def gpu_rows(device: str, checks: Checks, small: bool = False) -> list[dict]:
    """Step 3 of ``make gpu-check``: fused vs eager forward + backward time and peak memory on ``device``
    (the default backend is the fused one: Triton on CUDA, the chunked path on a CPU); fused results that
    differ from eager are recorded in ``checks``; an eager run that runs out of memory is a row saying so."""
    rows = []
    for n in SMALL_SHAPES if small else GPU_SHAPES:
        for tag, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            z, labels = _inputs(n, DIM, device, dt)
            row = dict(kernel="contrastive_loss", shape=f"N={n},D={DIM},{tag}")
            res = {}
            for provider, backend in (("fused", None), ("eager", "eager")):
                step = partial(_step, z, labels, backend)
                try:
                    res[provider] = step()
                    mem = _peak_bytes(step, device)
                    t = bench(step, device, budget_ms=200, reps=1 if small else 5)
                except torch.OutOfMemoryError:
                    res.pop(provider, None)
                    torch.cuda.empty_cache()
                    rows.append({**row, "provider": provider, "metric": "fwd_bwd_time_ms",
                                 "value": "out of memory"})
                    continue
                rows += timing_rows({**row, "provider": provider}, "fwd_bwd_time_ms", t, 1e3)
                if mem is not None:
                    rows.append({**row, "provider": provider, "metric": "peak_mb",
                                 "value": f"{mem / 2**20:.1f}"})
            if "eager" in res and "fused" in res:
                tol = 1e-4 if dt == torch.float32 else 3e-2
                for i, what in enumerate(("loss", "dz")):
                    a, b = res["fused"][i].double(), res["eager"][i].double()
                    err = ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
                    checks.within(f"contrastive {row['shape']}: fused vs eager {what} (relative)", err, tol)
            del res, z
            torch.cuda.empty_cache()  # (a no-op without CUDA)
    return [{**r, "device": device_label(device)} for r in rows]


def aot_only_rows() -> list[dict]:
    """What runs, compiled ahead of time for sm_80 / sm_90 (``benchmarks.common.aot_rows``)."""
    from vpace_kernels.contrastive import shipped_launches

    rows = aot_rows("contrastive", shipped_launches)
    spills = [r for r in rows if r["metric"] == "spill_bytes" and r["value"]]
    print(f"contrastive AOT: {len(rows) // 7} launches compiled (sm_80, sm_90), {len(spills)} with spills",
          flush=True)
    return rows


def run(out_dir: Path) -> None:
    """Append CPU rows, GPU rows (with CUDA) and AOT register/spill rows to ``out_dir/kernels.csv``."""
    torch.set_grad_enabled(True)
    checks = Checks()
    gpu = gpu_rows("cuda", checks) if torch.cuda.is_available() else []
    if checks.failures:
        raise RuntimeError("contrastive: wrong GPU results: " + "; ".join(checks.failures))
    append_rows(Path(out_dir) / "kernels.csv", _cpu_rows() + gpu + aot_only_rows())


if __name__ == "__main__":
    run(Path(__file__).parent / "results")
