"""What every pretext method shares: the batch contract, the metric type and the per-pace clip tallies.

A method is a model (an `nn.Module` holding all its state: trainable encoder, momentum encoder, queue) whose
`forward(clips)` returns outputs, and a loss `loss(outputs, meta) -> (loss, metrics)` outside it, as in moco.
A momentum encoder and its queue update inside a training forward, where moco does it, so a step is just
forward, loss, backward, optimizer step (`vpace.train.step.train_step`).

Batch contract (all methods): `clips` float [B*n, 3, T, h, w] (already augmented/normalised), grouped by
video: rows `v*n .. v*n+n-1` are the n clips of video v; `meta` holds int64 tensors `pace_label` [B*n]
(index into the sorted pace/speed set) and `video_id` [B*n]. n = `data.clips_per_video` (RSPNet: 3).

Metrics: every metric is a `(sum, count)` pair of tensors on the batch's device (`Metric`), so a step never
waits for the GPU; the train loop adds pairs over steps and workers and divides once per log window. A loss
is `(loss, 1)` (the window value is its mean over steps), an accuracy `(hits, clips)` (the exact ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vpace.data.pace import pace_metric_name

# the per-pace ratio metrics (`pace_tallies`), named `<group>/<pace>` per pace and `<group>` for all clips
TALLY_GROUPS = ("wrap_frac", "pace_acc", "pace_acc_wrap", "pace_acc_nowrap")
Outputs = dict[str, Any]  # a model's forward output (tensors, None for a head that is off, or nested dicts)
Metric = tuple[Tensor, Tensor]  # (sum, count): the metric's value is sum / count
Metrics = dict[str, Metric]
LossFn = Callable[[Outputs, dict[str, Tensor]], tuple[Tensor, Metrics]]


def per_step(values: Mapping[str, Tensor]) -> Metrics:
    """Per-step values (losses, batch means) as metrics averaged over steps: `(value, 1)` each."""
    out = {}
    for k, v in values.items():
        v = v.detach().to(torch.float64).reshape(())
        out[k] = (v, torch.ones_like(v))
    return out


def metric_values(metrics: Mapping[str, Metric]) -> dict[str, float]:
    """sum / count of each metric (a host read: for tests and tools, never inside a training step)."""
    return {k: float(s) / float(c) for k, (s, c) in metrics.items() if float(c) > 0}


def check_meta(meta: dict[str, Tensor], rows: int, n: int, method: str) -> int:
    """Validate the batch contract for `rows` clips; returns B (videos). Errors name the bad field."""
    if rows % n:
        raise ValueError(f"{method}: clips has {rows} rows, not a multiple of clips_per_video={n}")
    for key in ("pace_label", "video_id"):
        t = meta.get(key)
        if t is None:
            raise ValueError(f"{method}: batch meta is missing '{key}' (have {sorted(meta)})")
        if t.shape != (rows,) or t.dtype != torch.long:
            raise ValueError(f"{method}: meta['{key}'] must be int64 [{rows}], "
                             f"got {t.dtype} {tuple(t.shape)}")
    return rows // n


def pace_tallies(pace_label: Tensor, wrapped: Tensor, paces: Sequence[Fraction],
                 logits: Tensor | None = None) -> Metrics:
    """Per-pace clip counts as metrics `name -> (hits, clips)`, computed on the device.

    For each pace (`wrap_frac/p2`, names by `vpace.data.pace.pace_metric_name`) and for all clips (the bare
    name): `wrap_frac` = clips that wrapped / clips; with a pace classifier (`logits`) also `pace_acc`
    (correct / clips), `pace_acc_wrap` (among wrapped clips) and `pace_acc_nowrap` (among the others).
    """
    w = wrapped.reshape(-1).to(torch.float64)
    ok = (logits.detach().argmax(1) == pace_label).to(torch.float64) if logits is not None else w * 0
    per_clip = torch.stack([torch.ones_like(w), w, ok, ok * w], 1)  # 1, wrapped, correct, correct and wrapped
    per_pace = F.one_hot(pace_label, len(paces)).to(torch.float64).T @ per_clip
    n, nw, c, cw = torch.cat([per_pace, per_pace.sum(0, keepdim=True)]).unbind(1)  # [paces + 1] each
    pairs = dict(zip(TALLY_GROUPS, [(nw, n), (c, n), (cw, nw), (c - cw, n - nw)], strict=True))
    groups = TALLY_GROUPS if logits is not None else TALLY_GROUPS[:1]
    suffixes = [f"/{pace_metric_name(p)}" for p in paces] + [""]  # row i of n, nw, c, cw: pace i, then all
    return {g + sfx: (pairs[g][0][i], pairs[g][1][i]) for g in groups for i, sfx in enumerate(suffixes)}
