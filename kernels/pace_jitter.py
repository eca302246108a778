"""Fused pace gather + crop + flip + per-frame color jitter + normalize (Liger style).

The pace paper jitters every frame independently; eagerly that is a Python loop over B*T frames with a dozen
full float passes each (hue's RGB->HSV->RGB dominates). Here every output pixel is produced in one go.
The contract (layouts, parameter record, op codes, torchvision semantics, validation) is
``pace_jitter_spec``; contrast blends with the gray mean of the current frame, so the fused versions compute
that mean in a first pass.

Four implementations of one contract:
  * ``pace_jitter_reference``: frame by frame with torchvision - the ground truth.
  * ``_pace_jitter_kernel``, launched by ``pace_jitter_triton``: one Triton launch, a program per output
    frame (b, t): pass 1 over the frame for the gray mean before contrast, pass 2 applies everything, stores.
    CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1`` (tests).
  * ``pace_jitter_cpu`` (``pace_jitter_cpu.py``): the same two passes per frame as a small C kernel built on
    first use, threads over frames.
  * ``pace_jitter_eager`` (``pace_jitter_eager.py``): batched plain torch on any device, frames grouped by op
    order; the fallback without a C compiler and the "batched eager" baseline of the GPU benchmark.

No autograd: this is input preprocessing of uint8 video, there is nothing upstream to differentiate.
Bytes moved per version: see ``benchmarks/kernels_jitter.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .pace_jitter_cpu import pace_jitter_cpu
from .pace_jitter_eager import pace_jitter_eager
from .pace_jitter_spec import (
    BACKENDS,
    BRIGHTNESS,
    CONTRAST,
    HUE,
    OUT_DTYPES,
    SATURATION,
    JitterParams,
    validate,
)
from .utils import TRITON_DTYPES, interpreted, triton_can_run

__all__ = ["JitterParams", "pace_jitter", "pace_jitter_reference", "pace_jitter_triton", "pick_backend",
           "shipped_configs"]

# Shipped launch configs (autotune does not work under the interpreter, so configs are fixed and chosen by
# frame size). Every entry is AOT-compiled for sm80/sm90 in the tests and the benchmark.
_CONFIGS: tuple[dict, ...] = (
    dict(BLOCK=256, num_warps=2),
    dict(BLOCK=1024, num_warps=4),
    dict(BLOCK=2048, num_warps=8),
)
# The op codes as Triton compile-time constants (a @triton.jit function may read only constexpr globals).
_CONTRAST, _SATURATION, _HUE = tl.constexpr(CONTRAST), tl.constexpr(SATURATION), tl.constexpr(HUE)


# ----------------------------------------------------------------------------------------------- reference
def pace_jitter_reference(frames: torch.Tensor, index_map: torch.Tensor, params: JitterParams, mean=None,
                          std=None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ground truth: frame by frame with ``torchvision.transforms.v2.functional`` (slow, obviously right)."""
    import torchvision.transforms.v2.functional as TF

    mean_t, std_t = validate(frames, index_map, params, mean, std, out_dtype)
    ops = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast, SATURATION: TF.adjust_saturation,
           HUE: TF.adjust_hue}
    B, T = index_map.shape
    h, w = params.crop_hw
    out = torch.empty(B, 3, T, h, w, dtype=out_dtype, device=frames.device)
    for b in range(B):
        top, left = (int(v) for v in params.crop_yx[b])
        for t in range(T):
            img = TF.to_dtype(frames[b, int(index_map[b, t])].permute(2, 0, 1), torch.float32, scale=True)
            img = TF.crop(img, top, left, h, w)
            if bool(params.flip[b]):
                img = TF.horizontal_flip(img)
            if bool(params.apply[b, t]):
                for op in params.order[b, t].tolist():
                    img = ops[op](img, float(params.factors[b, t, op]))
            img = TF.normalize(img, mean_t.tolist(), std_t.tolist())
            out[b, :, t] = img.to(out_dtype)
    return out


# ----------------------------------------------------------------------------------------------- Triton
@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _gray(r, g, b):
    return r * 0.2989 + g * 0.587 + b * 0.114


@triton.jit
def _hue(r, g, b, hue):
    """torchvision's _rgb2hsv -> shift -> _hsv2rgb, with its zero guards (gray pixels keep h = 0, s = 0)."""
    maxc = tl.maximum(r, tl.maximum(g, b))
    minc = tl.minimum(r, tl.minimum(g, b))
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / tl.where(eqc, 1.0, maxc)
    crd = tl.where(eqc, 1.0, cr)
    rc = (maxc - r) / crd
    gc = (maxc - g) / crd
    bc = (maxc - b) / crd
    is_r = maxc == r
    is_g = (maxc == g) & (~is_r)
    h = tl.where(is_r, bc - gc, tl.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h * (1.0 / 6.0) + 1.0
    h = h - tl.floor(h)  # fmod(h, 1) for h > 0
    h = h + hue
    h = h - tl.floor(h)  # torch.remainder(h, 1): may round up to exactly 1.0, handled by i % 6 below
    h6 = h * 6.0
    fi = tl.floor(h6)
    f = h6 - fi
    i = fi.to(tl.int32) % 6
    v = maxc
    sxf = s * f
    p = _clamp01((1.0 - s) * v)
    q = _clamp01((1.0 - sxf) * v)
    t = _clamp01((sxf + (1.0 - s)) * v)
    r2 = tl.where(i == 0, v, tl.where(i == 1, q, tl.where((i == 2) | (i == 3), p, tl.where(i == 4, t, v))))
    g2 = tl.where(i == 0, t, tl.where((i == 1) | (i == 2), v, tl.where(i == 3, q, p)))
    b2 = tl.where(i <= 1, p, tl.where(i == 2, t, tl.where(i <= 4, v, q)))
    return r2, g2, b2


@triton.jit
def _apply_op(r, g, b, op, fac, mean):
    if op == _HUE:
        r, g, b = _hue(r, g, b, fac)
    else:
        # brightness, contrast and saturation are all torchvision's _blend(img, ref, fac) with ref = 0,
        # the frame's gray mean, or the pixel's gray value; brightness's clamp(x * f) is the ref = 0 case.
        if op == _SATURATION:
            ref = _gray(r, g, b)
        else:
            ref = tl.zeros_like(r) + tl.where(op == _CONTRAST, mean, 0.0)
        r = _clamp01(r * fac + ref * (1.0 - fac))
        g = _clamp01(g * fac + ref * (1.0 - fac))
        b = _clamp01(b * fac + ref * (1.0 - fac))
    return r, g, b


@triton.jit
def _load_tile(frames_ptr, src_base, p, mask, w, W, x0, flip):
    y = p // w
    x = p % w
    x = tl.where(flip != 0, w - 1 - x, x)
    addr = src_base + (y * W + x0 + x).to(tl.int64) * 3
    r = tl.load(frames_ptr + addr, mask=mask, other=0).to(tl.float32) * (1.0 / 255.0)
    g = tl.load(frames_ptr + addr + 1, mask=mask, other=0).to(tl.float32) * (1.0 / 255.0)
    b = tl.load(frames_ptr + addr + 2, mask=mask, other=0).to(tl.float32) * (1.0 / 255.0)
    return r, g, b


# Sizes are not specialized: each new shape would otherwise compile again (alignment hints do not help the
# stride-3 RGB gathers), and the tests and benchmarks run many shapes.
@triton.jit(do_not_specialize=["F", "H", "W", "T", "h", "w"])
def _pace_jitter_kernel(frames_ptr, index_ptr, crop_ptr, flip_ptr, apply_ptr, factors_ptr, order_ptr,
                        mean_ptr, std_ptr, out_ptr, F, H, W, T, h, w, BLOCK: tl.constexpr):
    pid = tl.program_id(0)  # one program per output frame (b, t)
    bi = pid // T
    t = pid % T
    src = tl.load(index_ptr + pid).to(tl.int64)
    y0 = tl.load(crop_ptr + 2 * bi)
    x0 = tl.load(crop_ptr + 2 * bi + 1)
    flip = tl.load(flip_ptr + bi)
    jitter = tl.load(apply_ptr + pid) != 0
    src_base = ((bi.to(tl.int64) * F + src) * H + y0) * W * 3
    n = h * w
    offs = tl.arange(0, BLOCK)

    # Pass 1: gray mean of the frame as it is when contrast runs (after the ops preceding it).
    o0 = tl.load(order_ptr + pid * 4)
    o1 = tl.load(order_ptr + pid * 4 + 1)
    o2 = tl.load(order_ptr + pid * 4 + 2)
    n_before = tl.where(o0 == _CONTRAST, 0, tl.where(o1 == _CONTRAST, 1, tl.where(o2 == _CONTRAST, 2, 3)))
    mean = tl.zeros([], dtype=tl.float32)
    if jitter:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n, BLOCK):
            p = start + offs
            mask = p < n
            r, g, b = _load_tile(frames_ptr, src_base, p, mask, w, W, x0, flip)
            for k in range(n_before):  # runtime loops keep one copy of the op code (no spills, small cubin)
                op = tl.load(order_ptr + pid * 4 + k)
                r, g, b = _apply_op(r, g, b, op, tl.load(factors_ptr + pid * 4 + op), 0.0)
            acc += tl.where(mask, _gray(r, g, b), 0.0)
        mean = tl.sum(acc, axis=0) / n

    # Pass 2: all ops in this frame's order, normalize, store channels-first.
    m0, m1, m2 = tl.load(mean_ptr), tl.load(mean_ptr + 1), tl.load(mean_ptr + 2)
    s0, s1, s2 = tl.load(std_ptr), tl.load(std_ptr + 1), tl.load(std_ptr + 2)
    n_ops = tl.where(jitter, 4, 0)
    plane = tl.zeros([], dtype=tl.int64) + n  # (the AOT signature may make a size constexpr 1: no .to())
    out_base = (bi.to(tl.int64) * 3 * T + t) * plane
    for start in range(0, n, BLOCK):
        p = start + offs
        mask = p < n
        r, g, b = _load_tile(frames_ptr, src_base, p, mask, w, W, x0, flip)
        for k in range(n_ops):
            op = tl.load(order_ptr + pid * 4 + k)
            r, g, b = _apply_op(r, g, b, op, tl.load(factors_ptr + pid * 4 + op), mean)
        dst = out_ptr + out_base + p
        ty = out_ptr.dtype.element_ty
        tl.store(dst, ((r - m0) / s0).to(ty), mask=mask)
        tl.store(dst + T * plane, ((g - m1) / s1).to(ty), mask=mask)
        tl.store(dst + 2 * T * plane, ((b - m2) / s2).to(ty), mask=mask)


def _pick_config(h: int, w: int) -> dict:
    """Smallest shipped config whose tile loop runs <= 4 times; under the interpreter one tile per frame
    (each interpreted op costs ~0.1 ms whatever its size, so fewer, larger tiles are much faster)."""
    n = h * w
    if interpreted(_pace_jitter_kernel):
        return dict(BLOCK=min(triton.next_power_of_2(n), 1 << 16), num_warps=4)
    for cfg in _CONFIGS:
        if n <= 4 * cfg["BLOCK"]:
            return cfg
    return _CONFIGS[-1]


def pace_jitter_triton(frames: Tensor, index_map: Tensor, params: JitterParams, mean_t: Tensor, std_t: Tensor,
                       out_dtype: torch.dtype, config: dict | None = None) -> Tensor:
    """Launch the kernel on arguments ``validate`` accepted (``mean_t``/``std_t`` are its return values);
    ``config`` (``BLOCK``, ``num_warps``) overrides the one picked by frame size."""
    B, F, H, W, _ = frames.shape
    T = index_map.shape[1]
    h, w = params.crop_hw
    out = torch.empty(B, 3, T, h, w, dtype=out_dtype, device=frames.device)
    if out.numel() == 0:
        return out
    i32 = dict(dtype=torch.int32, device=frames.device)
    p = params
    cfg = config or _pick_config(h, w)
    small = [t.to(**i32).contiguous() for t in (index_map, p.crop_yx, p.flip, p.apply)]
    _pace_jitter_kernel[(B * T,)](
        frames.contiguous(), *small, p.factors.to(frames.device).contiguous(), p.order.to(**i32).contiguous(),
        mean_t, std_t, out, F, H, W, T, h, w, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])
    return out


def pick_backend(frames: Tensor) -> str:
    """What ``backend=None`` runs: "triton" where Triton runs (CUDA, or the interpreter), else "cpu"."""
    return "triton" if triton_can_run(frames, _pace_jitter_kernel) else "cpu"


def pace_jitter(frames: torch.Tensor, index_map: torch.Tensor, params: JitterParams, mean=None, std=None,
                out_dtype: torch.dtype = torch.float32, *, backend: str | None = None) -> torch.Tensor:
    """uint8 ``[B, F, H, W, 3]`` frames -> normalized, jittered clip ``[B, 3, T, h, w]`` of ``out_dtype``.

    ``backend=None`` picks: CUDA tensors -> "triton"; CPU tensors -> "cpu" (the C kernel, falling back to
    "eager" when no C compiler works), or "triton" when Triton's interpreter is active (``TRITON_INTERPRET=1``
    before import; slow). "eager" (batched torch) runs on any device.
    ``mean``/``std`` default to 0 / 1 (no normalization). Input preprocessing: no autograd.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    params = params.to(frames.device) if isinstance(frames, torch.Tensor) else params
    mean_t, std_t = validate(frames, index_map, params, mean, std, out_dtype)
    backend = backend or pick_backend(frames)
    if backend == "triton":
        if not triton_can_run(frames, _pace_jitter_kernel):
            raise ValueError("backend: 'triton' needs CUDA tensors or TRITON_INTERPRET=1 set before import")
        return pace_jitter_triton(frames, index_map, params, mean_t, std_t, out_dtype)
    if backend == "eager":
        return pace_jitter_eager(frames, index_map, params, mean_t, std_t, out_dtype)
    if frames.is_cuda:
        raise ValueError(f"backend: 'cpu' is the CPU path, but frames are on {frames.device}")
    return pace_jitter_cpu(frames, index_map, params, mean_t, std_t, out_dtype)


def shipped_configs(dtypes: tuple[torch.dtype, ...] = OUT_DTYPES) -> list[dict]:
    """Every (launch config, out dtype) the launcher can pick, as ``vpace_kernels.aot`` compile jobs."""
    sig = {"frames_ptr": "*u8", "index_ptr": "*i32", "crop_ptr": "*i32", "flip_ptr": "*i32",
           "apply_ptr": "*i32", "factors_ptr": "*fp32", "order_ptr": "*i32", "mean_ptr": "*fp32",
           "std_ptr": "*fp32", "out_ptr": None}
    sig.update({k: "i32" for k in ("F", "H", "W", "T", "h", "w")})
    sig["BLOCK"] = "constexpr"
    return [dict(name=f"[BLOCK={cfg['BLOCK']},{TRITON_DTYPES[dt]}]", fn=_pace_jitter_kernel,
                 signature={**sig, "out_ptr": f"*{TRITON_DTYPES[dt]}"}, constexprs={"BLOCK": cfg["BLOCK"]},
                 num_warps=cfg["num_warps"], num_stages=3)
            for cfg in _CONFIGS for dt in dtypes]
