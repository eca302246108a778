"""Shared benchmark plumbing: the CSV rows (schema in ``vpace.bench_rows``), the one timing helper, the
device's copy bandwidth, and the correctness checks a benchmark run must pass."""

from __future__ import annotations

import csv
import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vpace.bench_rows import CPU_DEVICE, FIELDS, machine

QUANTILES = (0.5, 0.2, 0.8)  # median, then the 20th and 80th percentiles (triton.testing.do_bench's order)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of ``n`` timed calls: the median and the 20th / 80th percentiles."""

    median: float
    q20: float
    q80: float
    n: int


def bench(fn: Callable[[], object], device: str | torch.device = "cpu", *, reps: int = 5, warmup: int = 1,
          budget_ms: float = 200.0, threads: int | None = None, clock: str = "cpu") -> Timing:
    """Time ``fn()``: the one timing helper of every benchmark (Liger style).

    CUDA: ``triton.testing.do_bench`` - CUDA events around each call after an L2 flush; it estimates the
    call's time from 5 calls and times as many as fit in ``budget_ms`` (at least one).
    CPU: ``warmup`` untimed calls, then ``reps`` timed ones by process CPU time (user + system of all this
    process's threads; steadier than wall time on a shared machine), with torch's intra-op threads set to
    ``threads`` if given. ``clock="wall"`` times wall-clock instead, for work done by other processes.
    """
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        med, q20, q80 = do_bench(fn, warmup=25, rep=budget_ms, quantiles=list(QUANTILES))
        n = -1  # do_bench does not say how many calls it timed
        return Timing(med / 1e3, q20 / 1e3, q80 / 1e3, n)
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock: expected 'cpu' or 'wall', got {clock!r}")
    now = time.process_time if clock == "cpu" else time.perf_counter
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = now()
            fn()
            times.append(now() - t0)
    finally:
        torch.set_num_threads(saved)
    q = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor(QUANTILES, dtype=torch.float64))
    med, q20, q80 = q.tolist()
    return Timing(med, q20, q80, len(times))


def timing_rows(row: dict, metric: str, t: Timing, scale: float = 1.0, digits: int = 4) -> list[dict]:
    """Three rows of one measurement: ``metric`` (median), ``metric_q20`` and ``metric_q80``, each x ``scale``
    (e.g. 1e3 for ``*_ms`` metrics)."""
    vals = (("", t.median), ("_q20", t.q20), ("_q80", t.q80))
    return [{**row, "metric": metric + suffix, "value": f"{v * scale:.{digits}g}"} for suffix, v in vals]


def device_label(device: str | torch.device) -> str:
    """The ``device`` column of a row: the GPU's name on CUDA, else ``CPU_DEVICE``."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else CPU_DEVICE


def copy_bandwidth(device: str | torch.device, nbytes: int = 1 << 30) -> tuple[float, Timing]:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + written per second) and its timing:
    the ceiling a memory-bound kernel is compared with, measured in the same run."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), device, budget_ms=200)
    return 2 * nbytes / t.median / 1e9, t


def loader_rate(dataset, workers: int, batch: int, collate: Callable, reps: int = 3) -> float:
    """Items per second a ``DataLoader`` with ``workers`` processes delivers: wall time (the work is in the
    workers) of one round - a batch from every worker - after a first round that pays for their start."""
    from torch.utils.data import DataLoader

    batches = iter(DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate))
    t = bench(lambda: [next(batches) for _ in range(workers)], reps=reps, clock="wall")
    return workers * batch / t.median  # (the workers stop when the iterator goes with this frame)


def aot_rows(kernel: str, shipped: Callable[[int], list], archs: tuple[int, ...] = (80, 90)) -> list[dict]:
    """What runs, compiled ahead of time for each arch with no GPU: the kernel module's ``shipped_launches``
    for that arch through ``vpace_kernels.aot.aot_compile_launches``. Per launch: registers, spill bytes,
    shared memory, warps, stages, wgmma (1) or not (0) and resident blocks per SM; the provider names the
    Triton version, the shape the arch, the launch's tiles and its grid."""
    import triton

    from vpace_kernels.aot import aot_compile_launches

    rows = []
    for arch in archs:
        for rec, _, res in aot_compile_launches(shipped(arch), archs=(arch,)):
            tiles = " ".join(f"{k}={v}" for k, v in rec.kwargs.items() if k not in ("num_warps",
                                                                                       "num_stages"))
            row = dict(kernel=f"{kernel}{rec.name}", provider=f"triton_aot_{triton.__version__}",
                       shape=f"sm_{arch} {tiles} grid {'x'.join(map(str, rec.grid))}",
                       device=f"sm_{arch} (ptxas, no GPU)")
            rows += [{**row, "metric": metric, "value": value} for metric, value in (
                ("registers", res.registers), ("spill_bytes", res.spill_bytes), ("shared_bytes", res.shared),
                ("num_warps", res.num_warps), ("num_stages", res.num_stages), ("wgmma", int(res.wgmma)),
                ("blocks_per_sm", res.blocks_per_sm))]
    return rows


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


class Checks:
    """Correctness checks of a benchmark run: each failure is printed at once and makes the run fail."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  WRONG: {what}", flush=True)

    def within(self, what: str, err: float, tol: float) -> bool:
        """Record ``err <= tol`` (a NaN error fails)."""
        ok = err <= tol
        if not ok:
            self.fail(f"{what}: error {err:.3g} > tolerance {tol:.3g}")
        return ok
