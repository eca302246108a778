"""Batched plain-torch version of the fused pace/jitter op, on any device (``pace_jitter_spec``: contract).

Gather + crop + flip of all frames at once, then the jittered frames in groups that share an op order (each
group's four ops run once on the whole group), then normalize. It is the CPU fallback when no C compiler
works and, on a GPU, the "batched eager" baseline the fused Triton kernel is measured against. Hue uses the
closed form of torchvision's HSV round trip, as the C kernel does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .pace_jitter_spec import BRIGHTNESS, HUE, OPS, SATURATION, JitterParams

__all__ = ["pace_jitter_eager"]

_CPU_GROUP = 32  # frames per group op on a CPU: a group's [32, 3, h*w] planes stay cache-sized


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, P] -> [n, 1, P]"""
    return x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114


def _hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """The closed-form hue rotation: x [n, 3, P], hue [n, 1, 1]."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc - minc
    inv = 1.0 / torch.where(chroma == 0, 1.0, chroma)
    h6 = torch.where(maxc == g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv)
    h6 = torch.where(maxc == r, (g - b) * inv, h6) + hue[:, 0] * 6.0
    h6 = h6 - 6.0 * torch.floor(h6 * (1.0 / 6.0))  # [0, 6]
    k = (h6[:, None] + torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1)) % 6.0
    return maxc[:, None] - chroma[:, None] * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def _ops(x: torch.Tensor, order: list[int], fac: torch.Tensor) -> torch.Tensor:
    """torchvision's ops in ``order`` on frames that share it: x [n, 3, P], fac [n, 4]."""
    for op in order:
        f = fac[:, op].view(-1, 1, 1)
        if op == HUE:
            x = _hue(x, f)
            continue
        ref = 0.0 if op == BRIGHTNESS else _gray(x) if op == SATURATION else _gray(x).mean(-1, True)
        x = (x * f + ref * (1.0 - f)).clamp_(0.0, 1.0)
    return x


def pace_jitter_eager(frames: Tensor, index_map: Tensor, params: JitterParams, mean_t: Tensor, std_t: Tensor,
                      out_dtype: torch.dtype) -> Tensor:
    """The op in plain torch on the frames' device, on arguments ``validate`` accepted (params and mean/std
    are moved there: a baseline, it reads values back freely)."""
    B, T = index_map.shape
    h, w = params.crop_hw
    dev = frames.device
    params, mean_t, std_t = params.to(dev), mean_t.to(dev), std_t.to(dev)
    x = torch.empty(B, T, h, w, 3, dtype=torch.uint8, device=dev)
    for b, ((y0, x0), flip) in enumerate(zip(params.crop_yx.tolist(), params.flip.tolist(), strict=True)):
        crop = frames[b, :, y0:y0 + h, x0:x0 + w]
        torch.index_select(crop.flip(2) if flip else crop, 0, index_map[b].to(dev), out=x[b])
    x = x.view(B * T, h * w, 3).transpose(1, 2).float().mul_(1.0 / 255.0)  # [B*T, 3, P]
    apply, order = params.apply.reshape(-1), params.order.reshape(-1, len(OPS)).long()
    fac = params.factors.reshape(-1, len(OPS)).float()
    code = (order * torch.tensor([64, 16, 4, 1], device=order.device)).sum(-1)  # one int per op order
    for c in code[apply].unique().tolist():
        idx = (apply & (code == c)).nonzero().flatten()
        group = len(idx) if dev.type == "cuda" else _CPU_GROUP  # a GPU takes every frame of an order at once
        for i in range(0, len(idx), group):
            sl = idx[i:i + group]
            x[sl] = _ops(x[sl], order[sl[0]].tolist(), fac[sl])
    x = (x - mean_t.view(1, 3, 1)) / std_t.view(1, 3, 1)
    return x.view(B, T, 3, h, w).transpose(1, 2).to(out_dtype, memory_format=torch.contiguous_format)
