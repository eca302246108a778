"""Contrastive loss: eager full-logits reference vs the chunked CPU path, plus GPU registers/spills.

Workload: SimCLR-style symmetric loss, ``q = k = cat(z1, z2)`` (N rows, D = 128, labels = video ids, so each
row has one positive), forward + backward, one timed run per shape and setting after a small warm-up.

Time is recorded twice: wall time with torch's default intra-op threads, and process CPU time with one
thread. The second is the stable one on a shared machine: under oversubscription (load average >> cores)
OpenMP barriers stall the many mid-size tile ops of the chunked path far more than eager's few huge ops, so
the multi-threaded wall ratio swings from run to run; the 1-minute load average is recorded with each shape.

Peak extra memory: tracemalloc does not see torch's CPU allocations, and RSS growth is blurred by glibc's
allocator reuse. So we replay the exact allocation stream of torch's CPU allocator recorded by
``torch.profiler`` (``profile_memory=True``): every allocation/free event with its size, sorted by time; the
running sum's maximum is the peak of bytes live beyond what existed before the call (inputs excluded, the
gradient and everything autograd saves included). It is measured in a separate, untimed run.

GPU: every shipped Triton config is compiled ahead of time for sm_80 and sm_90 (``kernels.aot``) and the
registers / spill bytes / static shared memory that ``ptxas -v`` and Triton report are recorded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from benchmarks.common import append_rows
from vpace_kernels.contrastive import aot_compile_shipped, contrastive_loss, shipped_configs

SHAPES = (1024, 4096, 8192)
DIM = 128
PROVIDERS = {"eager": "eager", "chunked_cpu": "chunked"}


def _inputs(n: int, d: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g).requires_grad_()
    labels = torch.arange(n // 2).repeat(2)  # two views per video
    return z, labels


def _step(z: torch.Tensor, labels: torch.Tensor, backend: str) -> None:
    contrastive_loss(z, z, labels, backend=backend).backward()
    z.grad = None


def _timed(fn, threads: int | None = None) -> tuple[float, float]:
    """(wall s, process CPU s) of one ``fn()``; ``threads`` temporarily sets torch's intra-op threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(saved)


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
    for backend in PROVIDERS.values():  # warm-up: first-call dispatch/allocator costs out of the timed runs
        _step(*_inputs(256), backend)
    for n in SHAPES:
        z, labels = _inputs(n)
        shape = f"N={n},D={DIM}"
        res = {}
        for provider, backend in PROVIDERS.items():
            step = lambda z=z, labels=labels, backend=backend: _step(z, labels, backend)
            wall, _ = _timed(step)
            _, cpu1 = _timed(step, threads=1)
            res[provider] = (wall, cpu1, peak_extra_bytes(step))
            for metric, value in (("fwd_bwd_wall_s", wall), ("fwd_bwd_cpu_s_1thread", cpu1),
                                  ("peak_extra_mb", res[provider][2] / 2**20)):
                rows.append(dict(kernel="contrastive_loss", provider=provider, shape=shape, metric=metric,
                                 value=f"{value:.4f}"))
        (we, ce, me), (wc, cc, mc) = res["eager"], res["chunked_cpu"]
        for metric, value in (("mem_reduction_vs_eager_x", me / max(mc, 1)), ("wall_vs_eager_x", wc / we),
                              ("cpu_1thread_vs_eager_x", cc / ce), ("loadavg_1min", os.getloadavg()[0])):
            rows.append(dict(kernel="contrastive_loss", provider="chunked_cpu", shape=shape, metric=metric,
                             value=f"{value:.3f}"))
        print(f"contrastive {shape}: eager {we:.2f}s wall {ce:.2f}s cpu(1t) {me / 2**20:.1f}MB | chunked "
              f"{wc:.2f}s wall {cc:.2f}s cpu(1t) {mc / 2**20:.1f}MB -> {me / max(mc, 1):.0f}x less memory, "
              f"{wc / we:.2f}x wall, {cc / ce:.2f}x cpu(1t); load avg {os.getloadavg()[0]:.1f}", flush=True)
    return rows


def _aot_rows() -> list[dict]:
    rows = []
    for name, arch, res in aot_compile_shipped(archs=(80, 90)):
        for metric, value in (("registers", res.registers), ("spill_bytes", res.spill_bytes),
                              ("shared_bytes", res.shared), ("num_warps", res.num_warps)):
            rows.append(dict(kernel=f"contrastive{name}", provider="triton_aot", shape=f"sm_{arch}",
                             metric=metric, value=value, device=f"sm_{arch} (ptxas, no GPU)"))
    spills = [r for r in rows if r["metric"] == "spill_bytes" and r["value"]]
    print(f"contrastive AOT: {len(shipped_configs())} configs x 2 archs compiled, "
          f"{len(spills)} with spills", flush=True)
    return rows


def run(out_dir: Path) -> None:
    """Append eager-vs-chunked CPU rows and AOT register/spill rows to ``out_dir/kernels.csv``."""
    torch.set_grad_enabled(True)
    append_rows(Path(out_dir) / "kernels.csv", _cpu_rows() + _aot_rows())


if __name__ == "__main__":
    run(Path(__file__).parent / "results")
