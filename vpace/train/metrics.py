"""Step metrics, kept on the device between log windows and reduced over the workers once per window.

Every metric is a `(sum, count)` pair (`vpace.objectives.Metric`): a window or epoch value is the sum over its
steps and workers divided by the count. So a loss (count 1 per step) is its mean over steps, and an accuracy
(count = clips) the exact ratio over clips. A step adds its pairs to a running tensor without reading
anything back; a flush all-reduces one float64 vector (metrics by sorted name, then the host counters) and
reads it once. A non-finite loss is counted on the device and raised at the flush, naming the steps.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from vpace.objectives import Metrics
from vpace.train.state import LoopState

COUNTERS = ("clips", "videos", "skipped", "data_wait_s")  # host-side totals of a window, summed over workers
STARVED_FRAC = 0.2  # a window that waits this much of its time for data says so
STARVED_HINT = ("add decode CPUs (data.loader=ray_data with decode nodes, docs/cluster.md) or re-encode the "
                "videos (`vpace prepare`)")  # what a starved run can do (the loop's warning, the report)


class Window:
    """The metrics of the steps since the last flush."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.names = device, None
        self.reset()

    def reset(self) -> None:
        self.pairs: Tensor | None = None  # [len(names), 2] on the device
        self.bad: Tensor | None = None  # steps whose loss was not finite
        self.counts = dict.fromkeys(COUNTERS, 0.0)
        self.steps: list[int] = []
        self.t0 = time.perf_counter()

    def add(self, step: int, loss: Tensor, metrics: Metrics, weight: float, **counts: float) -> None:
        """One step's `metrics` (a replayed batch has `weight` 0: it keeps DDP in step, counts nothing)."""
        names = sorted(metrics)
        if self.names is None:
            self.names = names
        elif names != self.names:  # every rank must reduce the same vector
            raise RuntimeError(f"step {step}: metrics {names} differ from the first step's {self.names}")
        pairs = torch.stack([torch.stack(metrics[k]) for k in names]).to(self.device, torch.float64) * weight
        bad = (~torch.isfinite(loss.detach())).to(torch.float64) * weight
        self.pairs = pairs if self.pairs is None else self.pairs + pairs
        self.bad = bad if self.bad is None else self.bad + bad
        for k, v in counts.items():
            self.counts[k] += v
        self.steps.append(step)

    def flush(self, st: LoopState, rank: int, world: int) -> dict[str, float]:
        """All-reduce the window (every rank calls it at the same step), add it to the epoch sums of `st`;
        returns its values, clips/s and the fraction of time spent waiting for data."""
        names = self.names or []
        pairs = self.pairs if self.pairs is not None else torch.zeros((len(names), 2), dtype=torch.float64,
                                                                       device=self.device)
        bad = self.bad if self.bad is not None else pairs.new_zeros(())
        host = torch.tensor([self.counts[k] for k in COUNTERS], dtype=torch.float64)
        vec = torch.cat([pairs.T.reshape(-1), bad.reshape(1), host.to(self.device)])
        if world > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
        g = vec.tolist()  # the window's one read from the device
        n, secs = len(names), max(time.perf_counter() - self.t0, 1e-9)
        sums, counts = g[:n], g[n:2 * n]
        totals = dict(zip(COUNTERS, g[2 * n + 1:], strict=True))
        if g[2 * n] > 0:
            where = f"steps {self.steps[0]}-{self.steps[-1]}" if self.steps else "this window"
            raise FloatingPointError(f"loss is not finite in {int(g[2 * n])} step(s) of {where} (all ranks); "
                                     "lower optim.lr or check the data")
        out = {k: s / c for k, s, c in zip(names, sums, counts, strict=True) if c > 0}
        out["clips_per_s"] = totals["clips"] / secs
        out["data_wait_frac"] = totals["data_wait_s"] / (secs * world)
        for k, s, c in zip(names, sums, counts, strict=True):
            st.epoch_sums[k] = st.epoch_sums.get(k, 0.0) + s
            st.epoch_counts[k] = st.epoch_counts.get(k, 0.0) + c
        for k, v in (*totals.items(), ("seconds", secs)):
            st.epoch_sums[k] = st.epoch_sums.get(k, 0.0) + v
        st.skipped_total += int(totals["skipped"])
        self.reset()
        return out


def epoch_row(st: LoopState, lr: float, world: int) -> dict[str, Any]:
    """The finished epoch's values from the epoch sums (which it clears)."""
    s, c = st.epoch_sums, st.epoch_counts
    secs = max(s.get("seconds", 0.0), 1e-9)
    row: dict[str, Any] = {"epoch": st.epoch, "step": st.step}
    row.update({k: s[k] / c[k] for k in sorted(c) if c[k] > 0})
    row.update(videos=int(s.get("videos", 0)), skipped=int(s.get("skipped", 0)),
               clips_per_s=s.get("clips", 0.0) / secs,
               data_wait_frac=s.get("data_wait_s", 0.0) / (secs * world), lr=lr, world_size=world)
    st.epoch_sums, st.epoch_counts = {}, {}
    return row
