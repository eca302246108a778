"""The uniform interface the train loop drives, whatever the method.

Batch contract (all methods): `clips` float [B*n, 3, T, h, w] (already augmented/normalised), grouped by
video: rows `v*n .. v*n+n-1` are the n clips of video v; `meta` holds int64 tensors `pace_label` [B*n]
(index into the sorted pace/speed set) and `video_id` [B*n]. n = `objective.clips_per_video`.

Train-loop protocol:
    obj = build_objective(cfg, backbone).to(device)   # moves model + momentum encoder + queue
    obj.model = DDP(obj.model)            # optional (or ray's prepare_model); the same module stays inside
    opt = SGD(obj.parameters(), ...)      # trainable parameters only (never a momentum encoder)
    loss, metrics = obj.step(clips, meta); loss.backward(); opt.step(); obj.after_optimizer_step()
Every worker must call `after_optimizer_step` once per optimizer step (it may all-gather).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP/FSDP-style wrapper (anything with `.module`), else `model` itself."""
    return getattr(model, "module", model)


def metrics_to_floats(metrics: dict[str, Tensor | float]) -> dict[str, float]:
    """Tensor metrics -> python floats with one device sync (stack + tolist) instead of one per item."""
    keys = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor)}
    if keys:
        vals = torch.stack([metrics[k].detach().double().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, vals, strict=True))
    return {k: out[k] for k in metrics}


def check_batch(clips: Tensor, meta: dict[str, Tensor], n: int, method: str) -> int:
    """Validate the batch contract; returns B (videos). Errors name the bad field."""
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"{method}: clips must be [B*n, 3, T, H, W], got {tuple(clips.shape)}")
    rows = clips.shape[0]
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


class Objective:
    """Base: holds the trainable `model`; subclasses implement `step` (and maybe `after_optimizer_step`)."""

    method: str = ""
    clips_per_video: int = 1

    def __init__(self, model: nn.Module, backbone: nn.Module) -> None:
        self.model = model  # the train loop may replace this with its DDP wrapper of the same module
        self.backbone = backbone  # for export; shared with (not a copy of) the trainable model

    @property
    def raw_model(self) -> nn.Module:
        return unwrap(self.model)

    def modules(self) -> nn.Module:
        """Everything with state (model + momentum encoder + queue), for .to/.train/state_dict."""
        return self.raw_model

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer must get: trainable parameters only."""
        return [p for p in self.raw_model.parameters() if p.requires_grad]

    def step(self, clips: Tensor, meta: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Hook after `optimizer.step()` (RSPNet: momentum update + enqueue). No-op by default."""

    def to(self, device: torch.device | str) -> Objective:
        self.modules().to(device)
        return self

    def train(self, mode: bool = True) -> Objective:
        self.modules().train(mode)
        return self

    def eval(self) -> Objective:
        return self.train(False)

    def state_dict(self) -> dict[str, Tensor]:
        return self.modules().state_dict()

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True) -> None:
        self.modules().load_state_dict(state, strict=strict)
