"""Fused pace gather + crop + flip + per-frame color jitter + normalize (Liger style).

The pace paper jitters every frame independently; eagerly that is a Python loop over B*T frames with a dozen
full float passes each (hue's RGB->HSV->RGB dominates). Here every output pixel is produced in one go.

Layouts: ``frames`` uint8 ``[B, F, H, W, 3]`` (the F unique decoded frames of each clip), ``index_map`` int
``[B, T]`` into F (slow paces repeat a frame without decoding it twice), output ``[B, 3, T, h, w]``
(channels-first for a 3D CNN) in fp32 / bf16 / fp16. Per-frame random parameters arrive as small tensors
(:class:`JitterParams`); nothing here holds RNG state, so all implementations replay the same record.

Semantics are torchvision's (``transforms.v2.functional`` on float images in 0..1): crop, flip, then - if
the frame's ``apply`` flag is set - brightness / contrast / saturation / hue in that frame's ``order``, each
clamped as torchvision clamps, then ``(x - mean) / std``. Contrast blends with the mean gray level of the
*current* (cropped, partly jittered) frame, so the fused versions compute that mean in a first pass.

Three implementations of one contract:
  * ``pace_jitter_reference``: frame by frame with torchvision - the ground truth.
  * ``_pace_jitter_kernel``: one Triton launch, a program per output frame (b, t): pass 1 over the frame for
    the gray mean before contrast, pass 2 applies everything and stores. CUDA tensors, and CPU tensors under
    ``TRITON_INTERPRET=1`` (tests).
  * ``pace_jitter_cpu`` (``kernels/pace_jitter_cpu.py``): the same two passes per frame as a small C kernel
    built on first use, threads over frames; plain-torch fallback ``backend="cpu_eager"``.

No autograd: this is input preprocessing of uint8 video, there is nothing upstream to differentiate.
Bytes moved per version: see ``benchmarks/kernels_jitter.py``.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .pace_jitter_cpu import BRIGHTNESS, CONTRAST, HUE, SATURATION, pace_jitter_cpu

__all__ = ["JitterParams", "pace_jitter", "pace_jitter_reference", "KERNEL_CONFIGS", "aot_compile_configs",
           "validate", "BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"]

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TL_OUT = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}
# Shipped launch configs (autotune does not work under the interpreter, so configs are fixed and chosen by
# frame size). Every entry is AOT-compiled for sm80/sm90 in the tests and the benchmark.
KERNEL_CONFIGS: tuple[dict, ...] = (
    dict(BLOCK=256, num_warps=2),
    dict(BLOCK=1024, num_warps=4),
    dict(BLOCK=2048, num_warps=8),
)


@dataclasses.dataclass
class JitterParams:
    """Explicit parameter record of one augmentation draw (clip-level crop/flip, frame-level jitter).

    ``factors[..., i]`` is the factor of op ``i`` (0 brightness, 1 contrast, 2 saturation, 3 hue) whatever the
    order; ``order[b, t]`` is a permutation of 0..3; frames with ``apply`` False are only cropped/flipped.
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
    """Check every argument and return (mean, std) as float32 tensors of shape (3,) on the frames' device.

    Raises ValueError naming the bad argument. Reads index_map / order / crop values (one sync on GPU):
    out-of-range values would otherwise be silent out-of-bounds reads.
    """
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        raise ValueError(f"frames: expected a uint8 tensor, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape [B, F, H, W, 3], got {tuple(frames.shape)}")
    B, F, H, W, _ = frames.shape
    if index_map.dtype not in (torch.int32, torch.int64) or index_map.ndim != 2 or index_map.shape[0] != B:
        raise ValueError(f"index_map: expected int32/int64 [B={B}, T], got {index_map.dtype} "
                         f"{tuple(index_map.shape)}")
    T = index_map.shape[1]
    if index_map.numel() and (int(index_map.min()) < 0 or int(index_map.max()) >= F):
        raise ValueError(f"index_map: values must be in [0, {F}) (F unique frames), got "
                         f"[{int(index_map.min())}, {int(index_map.max())}]")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype: expected one of {_OUT_DTYPES}, got {out_dtype}")
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
            raise ValueError(f"params.{name}: expected {dtype or 'int32'} {shape}, "
                             f"got {t.dtype} {tuple(t.shape)}")
    y0, x0 = params.crop_yx[:, 0], params.crop_yx[:, 1]
    if B and (int(y0.min()) < 0 or int(x0.min()) < 0 or int(y0.max()) + h > H or int(x0.max()) + w > W):
        raise ValueError(f"params.crop_yx: crop boxes of {h}x{w} must lie inside the {H}x{W} frames, got top "
                         f"in [{int(y0.min())}, {int(y0.max())}], left in [{int(x0.min())}, {int(x0.max())}]")
    if params.order.numel():
        ref = torch.arange(4, device=params.order.device, dtype=params.order.dtype)
        if not bool((params.order.sort(dim=-1).values == ref).all()):
            raise ValueError("params.order: every [b, t] row must be a permutation of 0..3")
        f = params.factors
        bad = (~torch.isfinite(f)).any() | (f[..., :3] < 0).any() | (f[..., 3].abs() > 0.5).any()
        if bool(bad):
            raise ValueError("params.factors: brightness/contrast/saturation must be >= 0, hue in [-.5, .5]")
    mean = (0.0, 0.0, 0.0) if mean is None else mean
    std = (1.0, 1.0, 1.0) if std is None else std
    mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten().to(frames.device)
    std_t = torch.as_tensor(std, dtype=torch.float32).flatten().to(frames.device)
    if mean_t.numel() != 3 or not bool(torch.isfinite(mean_t).all()):
        raise ValueError(f"mean: expected 3 finite values, got {mean}")
    if std_t.numel() != 3 or not bool(torch.isfinite(std_t).all()) or bool((std_t <= 0).any()):
        raise ValueError(f"std: expected 3 finite positive values, got {std}")
    return mean_t, std_t


# ----------------------------------------------------------------------------------------------- reference
def pace_jitter_reference(frames: torch.Tensor, index_map: torch.Tensor, params: JitterParams, mean=None,
                          std=None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ground truth: frame by frame with ``torchvision.transforms.v2.functional`` (slow, obviously right)."""
    import torchvision.transforms.v2.functional as TF

    mean_t, std_t = validate(frames, index_map, params, mean, std, out_dtype)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
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
    if op == 3:
        r, g, b = _hue(r, g, b, fac)
    else:
        # brightness, contrast and saturation are all torchvision's _blend(img, ref, fac) with ref = 0,
        # the frame's gray mean, or the pixel's gray value; brightness's clamp(x * f) is the ref = 0 case.
        if op == 2:
            ref = _gray(r, g, b)
        else:
            ref = tl.zeros_like(r) + tl.where(op == 1, mean, 0.0)
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


@triton.jit
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
    n_before = tl.where(o0 == 1, 0, tl.where(o1 == 1, 1, tl.where(o2 == 1, 2, 3)))
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
    plane = tl.zeros([], dtype=tl.int64) + n  # (h, w or T may arrive as constexpr 1: no .to() on them)
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
    if _interpreted():
        return dict(BLOCK=min(triton.next_power_of_2(n), 1 << 16), num_warps=4)
    for cfg in KERNEL_CONFIGS:
        if n <= 4 * cfg["BLOCK"]:
            return cfg
    return KERNEL_CONFIGS[-1]


def _small_params(params: JitterParams, device) -> tuple[torch.Tensor, ...]:
    """The per-clip / per-frame records as contiguous int32 / float32 tensors on ``device``."""
    i32 = dict(dtype=torch.int32, device=device)
    return (params.crop_yx.to(**i32).contiguous(), params.flip.to(**i32).contiguous(),
            params.apply.to(**i32).contiguous(), params.factors.to(device=device).contiguous(),
            params.order.to(**i32).contiguous())


def _pace_jitter_triton(frames, index_map, params, mean_t, std_t, out_dtype, config: dict | None = None):
    B, F, H, W, _ = frames.shape
    T = index_map.shape[1]
    h, w = params.crop_hw
    out = torch.empty(B, 3, T, h, w, dtype=out_dtype, device=frames.device)
    if out.numel() == 0:
        return out
    crop, flip, apply, factors, order = _small_params(params, frames.device)
    cfg = config or _pick_config(h, w)
    _pace_jitter_kernel[(B * T,)](
        frames.contiguous(), index_map.to(torch.int32).contiguous(), crop, flip, apply, factors, order,
        mean_t, std_t, out, F, H, W, T, h, w, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"])
    return out


def _interpreted() -> bool:
    """True when the kernel can run in Triton's interpreter: TRITON_INTERPRET was set before *triton* was
    first imported (triton.language's own @jit helpers such as tl.sum are decorated at that import)."""
    return not any(isinstance(f, triton.runtime.JITFunction) for f in (_pace_jitter_kernel, tl.sum, tl.zeros))


BACKENDS = ("triton", "cpu", "cpu_eager")


def pace_jitter(frames: torch.Tensor, index_map: torch.Tensor, params: JitterParams, mean=None, std=None,
                out_dtype: torch.dtype = torch.float32, *, backend: str | None = None) -> torch.Tensor:
    """uint8 ``[B, F, H, W, 3]`` frames -> normalized, jittered clip ``[B, 3, T, h, w]`` of ``out_dtype``.

    ``backend=None`` picks: CUDA tensors -> the Triton kernel; CPU tensors -> the fused CPU path ("cpu": the
    C kernel, falling back to "cpu_eager", plain torch, when no C compiler works), or the Triton kernel itself
    when Triton's interpreter is active (``TRITON_INTERPRET=1`` before import; slow).
    ``mean``/``std`` default to 0 / 1 (no normalization). Input preprocessing: no autograd.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    params = params.to(frames.device) if isinstance(frames, torch.Tensor) else params
    mean_t, std_t = validate(frames, index_map, params, mean, std, out_dtype)
    if backend is None:
        backend = "triton" if frames.is_cuda or _interpreted() else "cpu"
    if backend == "triton":
        if not (frames.is_cuda or _interpreted()):
            raise ValueError("backend: 'triton' needs CUDA tensors or TRITON_INTERPRET=1 set before import")
        return _pace_jitter_triton(frames, index_map, params, mean_t, std_t, out_dtype)
    if frames.is_cuda:
        raise ValueError(f"backend: {backend!r} is the CPU path, but frames are on {frames.device}")
    return pace_jitter_cpu(frames, index_map, params, mean_t, std_t, out_dtype, native=backend == "cpu")


def kernel_signature(out_dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """Triton signature of ``_pace_jitter_kernel`` for ahead-of-time compilation."""
    sig = {"frames_ptr": "*u8", "index_ptr": "*i32", "crop_ptr": "*i32", "flip_ptr": "*i32",
           "apply_ptr": "*i32", "factors_ptr": "*fp32", "order_ptr": "*i32", "mean_ptr": "*fp32",
           "std_ptr": "*fp32", "out_ptr": _TL_OUT[out_dtype]}
    sig.update({k: "i32" for k in ("F", "H", "W", "T", "h", "w")})
    sig["BLOCK"] = "constexpr"
    return sig


def aot_compile_configs(archs=(80, 90), out_dtypes=_OUT_DTYPES) -> list[tuple[dict, torch.dtype, object]]:
    """AOT-compile every shipped config x out dtype x arch; returns (config, out_dtype, AotResult) rows."""
    from .aot import aot_compile_many

    jobs = [dict(signature=kernel_signature(dt), constexprs={"BLOCK": cfg["BLOCK"]}, arch=arch,
                 num_warps=cfg["num_warps"]) for cfg in KERNEL_CONFIGS for dt in out_dtypes for arch in archs]
    results = aot_compile_many(_pace_jitter_kernel, jobs)
    keys = [(cfg, dt) for cfg in KERNEL_CONFIGS for dt in out_dtypes for _ in archs]
    return [(cfg, dt, res) for (cfg, dt), res in zip(keys, results, strict=True)]

