"""What every pretext method shares: the batch contract, metric conversion and the per-pace clip tallies.

A method is a model (an `nn.Module` holding all its state: trainable encoder, momentum encoder, queue) whose
`forward(clips)` returns outputs, and a loss `loss(outputs, meta) -> (loss, metrics)` outside it, as in moco.

Batch contract (all methods): `clips` float [B*n, 3, T, h, w] (already augmented/normalised), grouped by
video: rows `v*n .. v*n+n-1` are the n clips of video v; `meta` holds int64 tensors `pace_label` [B*n]
(index into the sorted pace/speed set) and `video_id` [B*n]. n = `data.clips_per_video` (RSPNet: 3).

Train-loop protocol (`vpace.train.pretrain_task`):
    model, loss_fn = build_objective(cfg, backbone); model.to(device)
    ddp = DDP(model)                      # optional (or ray's prepare_model)
    opt = SGD([p for p in model.parameters() if p.requires_grad], ...)   # never a momentum encoder
    loss, metrics = loss_fn(ddp(clips), meta); loss.backward(); opt.step(); model.after_optimizer_step()
Every worker must call `after_optimizer_step` once per optimizer step (RSPNet all-gathers in it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vpace.data.pace import pace_metric_name

# the per-pace ratio metrics (`pace_tallies`), named `<group>/<pace>` per pace and `<group>` for all clips
TALLY_GROUPS = ("wrap_frac", "pace_acc", "pace_acc_wrap", "pace_acc_nowrap")
Outputs = dict[str, Any]  # a model's forward output (tensors, None for a head that is off, or nested dicts)
LossFn = Callable[[Outputs, dict[str, Tensor]], tuple[Tensor, dict[str, float]]]


def metrics_to_floats(metrics: dict[str, Tensor | float]) -> dict[str, float]:
    """Tensor metrics -> python floats with one device sync (stack + tolist) instead of one per item."""
    keys = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor)}
    if keys:
        vals = torch.stack([metrics[k].detach().double().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, vals, strict=True))
    return {k: out[k] for k in metrics}


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
                 logits: Tensor | None = None) -> dict[str, Tensor]:
    """Per-pace counts as ratio metrics `name -> [hits, total]` (float64 views of one tensor, no sync).

    For each pace (`wrap_frac/p2`, names by `vpace.data.pace.pace_metric_name`) and for all clips (the bare
    name): `wrap_frac` = clips that wrapped / clips; with a pace classifier (`logits`) also `pace_acc`
    (correct / clips), `pace_acc_wrap` (among wrapped clips) and `pace_acc_nowrap` (among the others). The
    train loop sums hits and totals over steps and workers, so a window or epoch value is the exact ratio
    over its clips (the bare `pace_acc` replaces the loss's per-step mean).
    """
    w = wrapped.reshape(-1).to(torch.float64)
    ok = (logits.detach().argmax(1) == pace_label).to(torch.float64) if logits is not None else w * 0
    per_clip = torch.stack([torch.ones_like(w), w, ok, ok * w], 1)  # 1, wrapped, correct, correct and wrapped
    per_pace = F.one_hot(pace_label, len(paces)).to(torch.float64).T @ per_clip
    n, nw, c, cw = torch.cat([per_pace, per_pace.sum(0, keepdim=True)]).unbind(1)  # [paces + 1] each
    hits = torch.stack([nw, c, cw, c - cw], 1)  # columns in TALLY_GROUPS order
    totals = torch.stack([n, n, nw, n - nw], 1)
    pairs = torch.stack([hits, totals], 2).reshape(-1, 2)  # row (pace i, metric j) = i * 4 + j
    groups = TALLY_GROUPS if logits is not None else TALLY_GROUPS[:1]
    suffixes = [f"/{pace_metric_name(p)}" for p in paces] + [""]
    rows = pairs.unbind(0)
    return {g + sfx: rows[i * 4 + j] for i, sfx in enumerate(suffixes) for j, g in enumerate(groups)}
