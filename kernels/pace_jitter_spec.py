"""The contract of the fused pace/jitter op, shared by its Triton, CPU, eager and reference versions.

Layouts: ``frames`` uint8 ``[B, F, H, W, 3]`` (the F unique decoded frames of each clip), ``index_map`` int
``[B, T]`` into F (slow paces repeat a frame without decoding it twice), output ``[B, 3, T, h, w]``
(channels-first for a 3D CNN) in one of ``OUT_DTYPES``. Per-frame random parameters arrive as small tensors
(:class:`JitterParams`); nothing holds RNG state, so every version replays the same record.

Semantics are torchvision's (``transforms.v2.functional`` on float images in 0..1): crop, flip, then - if
the frame's ``apply`` flag is set - brightness / contrast / saturation / hue in that frame's ``order``, each
clamped as torchvision clamps, then ``(x - mean) / std``. Contrast blends with the mean gray level of the
*current* (cropped, partly jittered) frame.
"""

from __future__ import annotations

import dataclasses

import torch

from .utils import describe

__all__ = ["BACKENDS", "BRIGHTNESS", "CONTRAST", "HUE", "OPS", "OUT_DTYPES", "SATURATION", "JitterParams",
           "validate", "validate_params"]

# Op codes: the values of ``JitterParams.order`` and the index of each op's factor in ``factors[..., op]``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
OPS = ("brightness", "contrast", "saturation", "hue")  # OPS[code]
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# "triton": the fused kernel (CUDA; CPU under TRITON_INTERPRET); "cpu": the C kernel; "eager": batched torch
# on any device. The per-frame torchvision ground truth is ``pace_jitter_reference``, not a backend.
BACKENDS = ("triton", "cpu", "eager")


@dataclasses.dataclass
class JitterParams:
    """Explicit parameter record of one augmentation draw (clip-level crop/flip, frame-level jitter).

    ``factors[..., op]`` is the factor of op code ``op`` whatever the order; ``order[b, t]`` is a permutation
    of the op codes; frames with ``apply`` False are only cropped/flipped.
    """

    crop_yx: torch.Tensor  # int32 [B, 2]: top, left of the crop box in the decoded frame
    crop_hw: tuple[int, int]  # (h, w) output size, the same for every clip of the batch
    flip: torch.Tensor  # bool [B]: horizontal flip of the whole clip
    apply: torch.Tensor  # bool [B, T]: color jitter on this output frame
    factors: torch.Tensor  # float32 [B, T, 4]
    order: torch.Tensor  # int32 [B, T, 4]

    def to(self, device: torch.device | str) -> JitterParams:
        return dataclasses.replace(self, crop_yx=self.crop_yx.to(device), flip=self.flip.to(device),
                                   apply=self.apply.to(device), factors=self.factors.to(device),
                                   order=self.order.to(device))


def validate(frames: torch.Tensor, index_map: torch.Tensor, params: JitterParams, mean, std,
             out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Check every argument and return (mean, std) as float32 CPU tensors of shape (3,).

    Raises ValueError naming the bad argument. Parameter values are checked on the CPU
    (:func:`validate_params`; params on a device are copied back first, a sync:
    ``vpace.augment.sample_params`` draws them on the CPU). ``index_map`` lives with the frames: on the CPU
    its values are checked here, on CUDA by a device-side assert that reads nothing back (a bad value fails
    the next synchronisation with this message), on ``meta`` not at all. Out-of-range values would
    otherwise be silent out-of-bounds reads.
    """
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        raise ValueError(f"frames: expected a uint8 tensor, got {describe(frames)}")
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape [B, F, H, W, 3], got {tuple(frames.shape)}")
    B, F, H, W, _ = frames.shape
    if (not isinstance(index_map, torch.Tensor) or index_map.dtype not in (torch.int32, torch.int64)
            or index_map.ndim != 2 or index_map.shape[0] != B):
        raise ValueError(f"index_map: expected int32/int64 [B={B}, T], got {describe(index_map)}")
    if index_map.device != frames.device:
        raise ValueError(f"index_map: on {index_map.device}, frames on {frames.device}")
    if index_map.numel():
        lo, hi = index_map.min(), index_map.max()
        what = f"index_map: values must be in [0, {F}) (F unique frames)"
        if index_map.device.type == "cpu":
            if int(lo) < 0 or int(hi) >= F:
                raise ValueError(f"{what}, got [{int(lo)}, {int(hi)}]")
        else:
            torch._assert_async((lo >= 0) & (hi < F), what)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype: expected one of {OUT_DTYPES}, got {out_dtype}")
    validate_params(params.to("cpu"), B, index_map.shape[1], H, W)
    mean_t = torch.as_tensor((0.0, 0.0, 0.0) if mean is None else mean, dtype=torch.float32).flatten().cpu()
    std_t = torch.as_tensor((1.0, 1.0, 1.0) if std is None else std, dtype=torch.float32).flatten().cpu()
    if mean_t.numel() != 3 or not bool(torch.isfinite(mean_t).all()):
        raise ValueError(f"mean: expected 3 finite values, got {mean}")
    if std_t.numel() != 3 or not bool(torch.isfinite(std_t).all()) or bool((std_t <= 0).any()):
        raise ValueError(f"std: expected 3 finite positive values, got {std}")
    return mean_t, std_t


def validate_params(params: JitterParams, B: int, T: int, H: int, W: int) -> None:
    """Shapes, dtypes and values of a parameter record for B clips of T frames cropped from H x W frames.

    Reads values, so it is meant for CPU tensors (where they are drawn): no device is involved.
    """
    h, w = params.crop_hw
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"params.crop_hw: expected two positive ints, got {params.crop_hw}")
    if h > H or w > W:
        raise ValueError(f"params.crop_hw: crop {h}x{w} is larger than the frames {H}x{W}")
    expect = dict(crop_yx=((B, 2), None), flip=((B,), torch.bool), apply=((B, T), torch.bool),
                  factors=((B, T, 4), torch.float32), order=((B, T, 4), None))
    for name, (shape, dtype) in expect.items():
        t = getattr(params, name)
        ok_dtype = t.dtype == dtype if dtype is not None else t.dtype in (torch.int32, torch.int64)
        if tuple(t.shape) != shape or not ok_dtype:
            raise ValueError(f"params.{name}: expected {dtype or 'int32'} {shape}, got {describe(t)}")
    y0, x0 = params.crop_yx[:, 0], params.crop_yx[:, 1]
    if B and (int(y0.min()) < 0 or int(x0.min()) < 0 or int(y0.max()) + h > H or int(x0.max()) + w > W):
        raise ValueError(f"params.crop_yx: crop boxes of {h}x{w} must lie inside the {H}x{W} frames, got top "
                         f"in [{int(y0.min())}, {int(y0.max())}], left in [{int(x0.min())}, {int(x0.max())}]")
    if params.order.numel():
        ref = torch.arange(len(OPS), device=params.order.device, dtype=params.order.dtype)
        if not bool((params.order.sort(dim=-1).values == ref).all()):
            raise ValueError("params.order: every [b, t] row must be a permutation of 0..3")
        f = params.factors
        if bool((~torch.isfinite(f)).any() | (f[..., :HUE] < 0).any() | (f[..., HUE].abs() > 0.5).any()):
            raise ValueError("params.factors: brightness/contrast/saturation must be >= 0, hue in [-.5, .5]")
