"""Heads on top of a backbone: pace classifier, projection heads, and the RSPNet two-head encoder.

Models here only return features/logits/embeddings (moco style); the losses live in `pace.py`/`rspnet.py`.
A head whose loss term is switched off is not built at all, so DDP never sees parameters without gradients.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vpace.config import PROJ_HEADS


def make_projection(in_dim: int, out_dim: int, kind: str = "linear") -> nn.Module:
    """`linear`: one fc (pace paper Table 2); `mlp`: fc-ReLU-fc, the nonlinear layer of Table 2's last row."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))
    raise ValueError(f"projection head kind must be one of {PROJ_HEADS}, got {kind!r}")


def _feature_dim(backbone: nn.Module) -> int:
    dim = getattr(backbone, "feature_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"backbone {type(backbone).__name__} has no integer .feature_dim (got {dim!r})")
    return dim


class PaceModel(nn.Module):
    """Backbone + pace classifier (Eq. 1) + optional projection head for the contrastive term (Eq. 2/3).

    forward(clips [B, 3, T, H, W]) -> {"logits": [B, M] or None, "z": [B, proj_dim] or None, "feat": [B, D]}.
    `num_paces=0` drops the classifier (contrastive only); `proj_head=None` drops the projection (pace only).
    `z` is not normalised here: the contrastive loss normalises (cosine similarity / tau).
    """

    def __init__(self, backbone: nn.Module, num_paces: int, proj_head: str | None = "linear",
                 proj_dim: int = 128) -> None:
        super().__init__()
        dim = _feature_dim(backbone)
        if num_paces < 0 or num_paces == 1:
            raise ValueError(f"PaceModel: num_paces must be 0 (no classifier) or >= 2, got {num_paces}")
        if num_paces == 0 and proj_head is None:
            raise ValueError("PaceModel: neither a pace classifier nor a projection head; nothing to train")
        self.backbone = backbone
        self.num_paces = num_paces
        self.pace_head = nn.Linear(dim, num_paces) if num_paces else None
        self.proj = make_projection(dim, proj_dim, proj_head) if proj_head is not None else None

    def forward(self, clips: Tensor) -> dict[str, Tensor | None]:
        feat = self.backbone(clips)
        return {
            "logits": self.pace_head(feat) if self.pace_head is not None else None,
            "z": self.proj(feat) if self.proj is not None else None,
            "feat": feat,
        }


class TwoHeadEncoder(nn.Module):
    """RSPNet encoder: backbone + appearance head (A-VID) + motion head (RSP), both L2-normalised.

    Mirrors the official MultiTaskWrapper: two independent projections of the same pooled feature.
    forward(clips) -> {"a": [B, dim], "m": [B, dim], "feat": [B, D]}.
    """

    def __init__(self, backbone: nn.Module, dim: int = 128, head: str = "linear") -> None:
        super().__init__()
        in_dim = _feature_dim(backbone)
        self.backbone = backbone
        self.head_a = make_projection(in_dim, dim, head)
        self.head_m = make_projection(in_dim, dim, head)

    def forward(self, clips: Tensor) -> dict[str, Tensor]:
        feat = self.backbone(clips)
        return {
            "a": F.normalize(self.head_a(feat).float(), dim=1),
            "m": F.normalize(self.head_m(feat).float(), dim=1),
            "feat": feat,
        }
