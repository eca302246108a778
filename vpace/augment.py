"""Seeded sampling of the augmentation parameter record for the fused pace/jitter op (paper §3.1).

Per clip: a random crop (same box for every frame) and a horizontal flip with probability ``flip_p``; per
output frame, independently: ``RandomApply(ColorJitter(brightness, contrast, saturation, hue), p=jitter_p)``
with torchvision's sampling (factors uniform in ``[max(0, 1 - x), 1 + x]``, hue in ``[-h, h]``, a random op
order per frame). ``per_frame=False`` draws one jitter per clip (the paper's ablation). The record is applied
by :func:`kernels.pace_jitter.pace_jitter` (Triton on GPU, fused torch on CPU), so the same draw can be
replayed through the eager torchvision reference.
"""

from __future__ import annotations

from typing import Any

import torch

from vpace_kernels.pace_jitter import JitterParams, pace_jitter

__all__ = ["KINETICS_MEAN", "KINETICS_STD", "JitterParams", "sample_params", "center_params", "augment"]

# torchvision video models' (Kinetics-400) normalization.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
_CFG_FIELDS = ("crop", "flip_p", "jitter_p", "brightness", "contrast", "saturation", "hue", "per_frame")


def _check_crop(crop: int, height: int, width: int) -> None:
    if crop < 1:
        raise ValueError(f"crop: must be >= 1, got {crop}")
    if crop > height or crop > width:
        raise ValueError(f"crop: {crop}x{crop} is larger than the frames {height}x{width}")


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def sample_params(batch: int, num_frames_out: int, height: int, width: int, cfg: Any = None, *,
                  crop: int = 112, flip_p: float = 0.5, jitter_p: float = 0.8, brightness: float = 0.8,
                  contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2, per_frame: bool = True,
                  generator: torch.Generator | None = None) -> JitterParams:
    """Draw crop/flip per clip and color jitter per output frame (or per clip), on the CPU.

    ``cfg`` (e.g. ``vpace.config.AugmentConfig``), when given, supplies every keyword above from its fields.
    ``generator`` makes the draw reproducible (None: torch's global RNG). Returns a :class:`JitterParams`.
    """
    if cfg is not None:
        crop, flip_p, jitter_p, brightness, contrast, saturation, hue, per_frame = (
            getattr(cfg, f) for f in _CFG_FIELDS)
    _check_crop(crop, height, width)
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if v < 0:
            raise ValueError(f"{name}: must be >= 0, got {v}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue: must be in [0, 0.5], got {hue}")
    for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name}: is a probability, got {p}")
    B, T = batch, num_frames_out
    g = generator
    top = torch.randint(0, height - crop + 1, (B,), generator=g)
    left = torch.randint(0, width - crop + 1, (B,), generator=g)
    flip = torch.rand(B, generator=g) < flip_p
    n = T if per_frame else 1  # jitter draws per clip
    apply = torch.rand(B, n, generator=g) < jitter_p
    ranges = [(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation)] + [(-hue, hue)]
    factors = torch.stack([_uniform((B, n), lo, hi, g) for lo, hi in ranges], dim=-1)
    order = torch.rand(B, n, 4, generator=g).argsort(dim=-1)  # uniform random permutation, like randperm(4)
    return JitterParams(crop_yx=torch.stack([top, left], 1).int(), crop_hw=(crop, crop), flip=flip,
                        apply=apply.expand(B, T).contiguous(), factors=factors.expand(B, T, 4).contiguous(),
                        order=order.expand(B, T, 4).int().contiguous())


def center_params(batch: int, num_frames_out: int, height: int, width: int, *,
                  crop: int = 112) -> JitterParams:
    """Evaluation transform: torchvision's center crop, no flip, no jitter."""
    _check_crop(crop, height, width)
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    B, T = batch, num_frames_out
    factors = torch.ones(B, T, 4)
    factors[..., 3] = 0.0
    return JitterParams(crop_yx=torch.tensor([[top, left]], dtype=torch.int32).repeat(B, 1),
                        crop_hw=(crop, crop), flip=torch.zeros(B, dtype=torch.bool),
                        apply=torch.zeros(B, T, dtype=torch.bool), factors=factors,
                        order=torch.arange(4, dtype=torch.int32).repeat(B, T, 1))


def augment(frames: torch.Tensor, index_map: torch.Tensor, params: JitterParams, mean=KINETICS_MEAN,
            std=KINETICS_STD, out_dtype: torch.dtype = torch.float32, *,
            backend: str | None = None) -> torch.Tensor:
    """uint8 unique frames ``[B, F, H, W, 3]`` + ``index_map [B, T]`` -> clips ``[B, 3, T, crop, crop]``,
    on the frames' device (params are moved there). ``backend``: see ``kernels.pace_jitter.pace_jitter``."""
    return pace_jitter(frames, index_map, params, mean, std, out_dtype, backend=backend)
