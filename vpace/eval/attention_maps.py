"""Activation-based attention maps of conv5 (pace paper Fig. 5, Zagoruyko & Komodakis 2017).

For a clip at each pace, attention = sum over channels of the squared conv5 activations at the last temporal
position (the one aligned with the clip's end frame), upsampled bilinearly to the crop and min-max scaled,
overlaid on the clip's last frame. One PNG grid: rows = videos, columns = paces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vpace.data import BrokenVideoError, VideoReader
from vpace.data.pace import format_pace, parse_pace_set
from vpace.errors import UserError
from vpace.eval.features import ClipSpec, center_clips, load_pace_clips
from vpace.eval.loading import eval_dir, load_model
from vpace.eval.plots import CELL_PX, image_grid, overlay_heatmap

log = logging.getLogger(__name__)


def activation_attention(conv5: Tensor, size: tuple[int, int]) -> Tensor:
    """conv5 [B, C, t, h, w] -> attention [B, H, W] in [0, 1]: sum_c A_c^2 at the last t, upsampled."""
    if conv5.dim() != 5:
        raise ValueError(f"conv5 must be [B, C, t, h, w], got {tuple(conv5.shape)}")
    a = conv5[:, :, -1].float().pow(2).sum(1, keepdim=True)  # [B, 1, h, w]
    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = a.amin(dim=(1, 2), keepdim=True)
    hi = a.amax(dim=(1, 2), keepdim=True)
    # a flat map (e.g. a 1x1 conv5) differs only by rounding: scaling that up would paint noise, so it is 0
    span = torch.where(hi - lo > 1e-5 * hi.abs(), hi - lo, torch.full_like(hi, torch.inf))
    return (a - lo) / span


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[3, H, W] normalized -> uint8 [H, W, 3] for display."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.float() * s + m).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


@torch.no_grad()
def attention(
    checkpoint: str | None,
    videos: Sequence[str],
    *,
    paces: str | None = None,
    out: str | None = None,
    backbone: str | None = None,
    start: int = 0,
    clip_len: int | None = None,
    cell_px: int = CELL_PX,
    scale: int = 1,
) -> dict:
    """Write the attention grid PNG; returns {"png", "rows", "cols", "subplots", "paces", "skipped"}.

    ``paces`` defaults to the run's pace set (else "1,2,3,4"); every clip of a row starts at ``start`` so the
    columns differ only in pace. Unreadable videos are skipped and listed, not fatal. ``scale`` multiplies
    the run's decode size and crop: a net trained on small crops has a conv5 of 1x1 there (no spatial map at
    all), and fully convolutional, it can be looked at on larger frames.
    """
    if scale < 1:
        raise ValueError(f"attention: scale must be >= 1, got {scale}")
    model = load_model(checkpoint, backbone=backbone)
    cfg = model.config
    pace_set = parse_pace_set(paces or (cfg.pace.paces if cfg else "1,2,3,4"))
    spec = ClipSpec.from_config(cfg, clip_len=clip_len)
    spec.height, spec.width, spec.crop = spec.height * scale, spec.width * scale, spec.crop * scale
    net = model.backbone.eval()
    grid, names, skipped = [], [], []
    for path in videos:
        try:
            reader = VideoReader(path, height=spec.height, width=spec.width)
            frames, imap = load_pace_clips(reader, pace_set, spec.clip_len, start)
        except BrokenVideoError as e:
            log.warning("attention: skipped unreadable video %s: %s", path, e.reason)
            skipped.append({"path": str(path), "reason": e.reason})
            continue
        x = center_clips(frames, imap, spec)
        conv5 = net.forward_features(x)["conv5"]
        if min(conv5.shape[-2:]) < 2 and not names:
            log.warning("attention: conv5 is %dx%d at %d px crops, so the maps are flat; pass a larger scale",
                        *conv5.shape[-2:], spec.crop)
        att = activation_attention(conv5, (spec.crop, spec.crop)).numpy()
        last = [denormalize(x[i, :, -1], spec.mean, spec.std) for i in range(len(x))]
        grid.append([overlay_heatmap(f, a) for f, a in zip(last, att, strict=True)])
        names.append(Path(path).stem[:24])
    if not grid:
        raise UserError(f"attention: none of the {len(videos)} video(s) could be read: {skipped}")
    png = Path(out) if out else eval_dir(checkpoint, None) / "attention.png"
    cols = [f"p={format_pace(p)}" for p in pace_set]
    png, n_axes = image_grid(grid, png, row_labels=names, col_labels=cols, cell_px=cell_px)
    print(f"wrote {png} ({len(grid)} videos x {len(pace_set)} paces)"
          + (f"; skipped {len(skipped)} unreadable" if skipped else ""))
    return {"png": str(png), "rows": len(grid), "cols": len(pace_set), "subplots": n_axes,
            "paces": [format_pace(p) for p in pace_set], "skipped": skipped}
