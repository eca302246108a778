"""Pace prediction (Eq. 1) + contrastive regulariser (Eq. 2 same context / Eq. 3 same pace), total Eq. 4.

L = lambda_cls * CE(logits, pace_label) + lambda_ctr * L_ctr, where L_ctr is the supervised-contrastive
loss of `kernels.contrastive.contrastive_loss` on the projections z (q = k = z, self excluded) with labels =
video id (same context: the n clips of a video are positives) or pace label (same pace). A term whose
weight is 0 or whose mode is `none` is skipped entirely (no head needed, no compute). The model is
`heads.PaceModel`; `build_pace` pairs it with its loss (`PaceLoss`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpace.config import PaceConfig
from vpace.objectives.base import Metrics, Outputs, check_meta, per_step
from vpace.objectives.heads import PaceModel
from vpace_kernels.contrastive import contrastive_loss


def uses_cls(cfg: PaceConfig) -> bool:
    return cfg.lambda_cls > 0


def uses_ctr(cfg: PaceConfig) -> bool:
    return cfg.ctr_mode != "none" and cfg.lambda_ctr > 0


def pace_objective(out: dict[str, Tensor | None], pace_label: Tensor, video_id: Tensor,
                   cfg: PaceConfig) -> tuple[Tensor, Metrics]:
    """Eq. 4 on a PaceModel output.

    Returns (loss, metrics) with per-step metrics loss, loss_cls, loss_ctr and rows_without_positive (rows
    left out of the contrastive mean); pace accuracy is counted per clip by `pace_tallies`.
    """
    cls_on, ctr_on = uses_cls(cfg), uses_ctr(cfg)
    if not (cls_on or ctr_on):
        raise ValueError("pace objective: all loss terms are off (pace.lambda_cls = 0 and "
                         "pace.lambda_ctr = 0 or pace.ctr_mode = none)")
    logits, z = out.get("logits"), out.get("z")
    ref = logits if logits is not None else z
    if ref is None:
        raise ValueError("pace objective: model output has neither 'logits' nor 'z'")
    zero = ref.new_zeros((), dtype=torch.float32)
    loss, loss_cls, loss_ctr, no_pos = zero, zero, zero, zero
    if cls_on:
        if logits is None:
            raise ValueError("pace.lambda_cls > 0 but the model has no pace classifier "
                             "(built with num_paces=0)")
        loss_cls = F.cross_entropy(logits.float(), pace_label)
        loss = loss + cfg.lambda_cls * loss_cls
    if ctr_on:
        if z is None:
            raise ValueError(f"pace.ctr_mode={cfg.ctr_mode!r} with lambda_ctr > 0 but the model has no "
                             "projection head (built with proj_head=None)")
        labels = video_id if cfg.ctr_mode == "same_context" else pace_label
        zf = z.float()  # rows without a positive drop out of the mean (all of them: loss 0, zero grad)
        loss_ctr, stats = contrastive_loss(zf, zf, labels, tau=cfg.tau, normalize=True, exclude_self=True,
                                           return_stats=True)
        no_pos = stats.rows_without_positive
        loss = loss + cfg.lambda_ctr * loss_ctr
    return loss, per_step({"loss": loss, "loss_cls": loss_cls, "loss_ctr": loss_ctr,
                           "rows_without_positive": torch.as_tensor(no_pos, device=loss.device)})


class PaceLoss:
    """Eq. 4 on a `PaceModel` output, the batch contract checked (n clips per video at distinct paces).
    Method `pace` is CE only, whatever the ctr fields say."""

    def __init__(self, cfg: PaceConfig, clips_per_video: int, method: str) -> None:
        self.cfg = dataclasses.replace(cfg, ctr_mode="none") if method == "pace" else cfg
        self.clips_per_video, self.method = clips_per_video, method

    def __call__(self, out: Outputs, meta: dict[str, Tensor]) -> tuple[Tensor, Metrics]:
        check_meta(meta, out["feat"].shape[0], self.clips_per_video, self.method)
        return pace_objective(out, meta["pace_label"], meta["video_id"], self.cfg)


def build_pace(backbone: nn.Module, cfg: PaceConfig, *, num_paces: int, method: str = "pace_ctr",
               clips_per_video: int = 2) -> tuple[PaceModel, PaceLoss]:
    """Methods `pace` and `pace_ctr` (Eq. 4): the model (only the heads its loss terms use), the loss."""
    loss = PaceLoss(cfg, clips_per_video, method)
    cfg = loss.cfg
    model = PaceModel(backbone, num_paces if uses_cls(cfg) else 0, cfg.proj_head if uses_ctr(cfg) else None,
                      cfg.proj_dim)
    return model, loss
