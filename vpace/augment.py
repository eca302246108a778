"""Seeded sampling of the augmentation parameter record for the fused pace/jitter op (paper §3.1).

Per clip: a random crop (same box for every frame) and a horizontal flip with probability ``flip_p``; per
output frame, independently: ``RandomApply(ColorJitter(brightness, contrast, saturation, hue), p=jitter_p)``
with torchvision's sampling (factors uniform in ``[max(0, 1 - x), 1 + x]``, hue in ``[-h, h]``, a random op
order per frame). ``per_frame=False`` draws one jitter per clip (the paper's ablation). The record is applied
by :func:`vpace_kernels.pace_jitter.pace_jitter` (Triton on GPU, its CPU path otherwise), so the same draw
can be replayed through the eager torchvision reference. The ranges are checked where config validation
checks them (``vpace.config.augment_problem``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from vpace.config import KINETICS_MEAN, KINETICS_STD, AugmentConfig, augment_problem
from vpace_kernels.pace_jitter import JitterParams, pace_jitter

__all__ = ["sample_params", "center_params", "augment"]


def _checked(cfg: AugmentConfig, height: int, width: int) -> AugmentConfig:
    if (problem := augment_problem(cfg, height, width)) is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    return cfg


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def sample_params(batch: int, num_frames_out: int, height: int, width: int, cfg: AugmentConfig | None = None,
                  generator: torch.Generator | None = None, **overrides: Any) -> JitterParams:
    """Draw crop/flip per clip and color jitter per output frame (or per clip), on the CPU.

    The settings are ``cfg`` (default: ``AugmentConfig()``) with any of its fields replaced by ``overrides``
    (``crop=``, ``hue=``, ...). ``generator`` makes the draw reproducible (None: torch's global RNG).
    """
    a = _checked(dataclasses.replace(cfg or AugmentConfig(), **overrides), height, width)
    crop = a.crop
    B, T = batch, num_frames_out
    g = generator
    top = torch.randint(0, height - crop + 1, (B,), generator=g)
    left = torch.randint(0, width - crop + 1, (B,), generator=g)
    flip = torch.rand(B, generator=g) < a.flip_p
    n = T if a.per_frame else 1  # jitter draws per clip
    apply = torch.rand(B, n, generator=g) < a.jitter_p
    ranges = [(max(0.0, 1 - v), 1 + v) for v in (a.brightness, a.contrast, a.saturation)] + [(-a.hue, a.hue)]
    factors = torch.stack([_uniform((B, n), lo, hi, g) for lo, hi in ranges], dim=-1)
    order = torch.rand(B, n, 4, generator=g).argsort(dim=-1)  # uniform random permutation, like randperm(4)
    return JitterParams(crop_yx=torch.stack([top, left], 1).int(), crop_hw=(crop, crop), flip=flip,
                        apply=apply.expand(B, T).contiguous(), factors=factors.expand(B, T, 4).contiguous(),
                        order=order.expand(B, T, 4).int().contiguous())


def center_params(batch: int, num_frames_out: int, height: int, width: int, *,
                  crop: int = AugmentConfig.crop) -> JitterParams:
    """Evaluation transform: torchvision's center crop, no flip, no jitter."""
    _checked(AugmentConfig(crop=crop), height, width)
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
    on the frames' device. ``params`` stay on the CPU where they were drawn: the op validates them there and
    sends them to the GPU in one non-blocking copy (no host sync). ``backend`` as in
    ``vpace_kernels.pace_jitter``."""
    return pace_jitter(frames, index_map, params, mean, std, out_dtype, backend=backend)
