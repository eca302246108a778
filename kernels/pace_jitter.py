"""Fused pace gather + crop + flip + per-frame color jitter + normalize (Liger style).

The pace paper jitters every frame independently; eagerly that is a Python loop over B*T frames with a dozen
full float passes each (hue's RGB->HSV->RGB dominates). Here every output pixel is produced in one go. The
contract (layouts, parameter record, op codes, torchvision semantics, validation) is ``pace_jitter_spec``;
contrast blends with the gray mean of the current frame, so the fused versions compute that mean first.

Four implementations of one contract:
  * ``pace_jitter_reference``: frame by frame with torchvision - the ground truth.
  * ``pace_jitter_triton``: two launches over (output frame, slice of its tiles) programs, so a batch of any
    size fills the GPU: per-slice gray sums before contrast, then every op, normalize, store. CUDA tensors,
    and CPU tensors under ``TRITON_INTERPRET=1`` (tests).
  * ``pace_jitter_cpu`` (``pace_jitter_cpu.py``): the same two passes per frame as a small C kernel.
  * ``pace_jitter_eager`` (``pace_jitter_eager.py``): batched plain torch on any device; the fallback without
    a C compiler and the "batched eager" baseline of the GPU benchmark.

No autograd: this is input preprocessing of uint8 video. Bytes moved: ``benchmarks/kernels_jitter.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import PLANNING_ARCH, Launch, launch, recording, sm_count, to_device
from .pace_jitter_cpu import pace_jitter_cpu
from .pace_jitter_eager import pace_jitter_eager
from .pace_jitter_spec import (
    BACKENDS,
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    JitterParams,
    validate,
)
from .utils import TRITON_DTYPES, triton_can_run

__all__ = ["JitterParams", "pace_jitter", "pace_jitter_reference", "pace_jitter_triton", "pick_backend",
           "shipped_launches"]

# GPU tiles: 1024 pixels, BLOCK_W the smallest of these >= the crop width (else the largest, several column
# blocks). Programs per SM the grid aims for: 4 waves of 8 resident 4-warp programs, so a batch of a few
# hundred frames still fills an H100 (132 SMs).
_BLOCK_WS = (32, 64, 128)
_TILE_PIXELS = 1024
_PROGRAMS_PER_SM = 32
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


# The packed launch record (one int32 tensor, one host-to-device copy): mean[3], std[3] as fp32 bits, two
# words of padding, then per output frame (b, t) ``_REC`` words: crop top, left, flip, apply, order[4],
# factors[4] (fp32 bits).
HEAD_WORDS, FRAME_WORDS = 8, 12
_HEAD, _REC = tl.constexpr(HEAD_WORDS), tl.constexpr(FRAME_WORDS)


@triton.jit
def _frame(index_ptr, rec_ptr, f, T, F, H, W):
    """Output frame ``f`` = (b, t): its record, apply flag and the int64 offset of its crop's top-left."""
    r = rec_ptr + _HEAD + f * _REC
    bi = f // T
    src = tl.load(index_ptr + f).to(tl.int64)
    src_base = ((bi.to(tl.int64) * F + src) * H + tl.load(r)) * W * 3
    return r, bi, src_base, tl.load(r + 3) != 0


@triton.jit
def _tile(tile, n_cb, h, w, ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    """Crop tile ``tile`` (row-major over ``n_cb`` column blocks): rows [ROWS], 4-pixel groups, pixels
    ``x = 4 g + lane`` [groups, 4] and the in-crop mask [ROWS, groups, 4]; no per-pixel div/mod."""
    rb = tile // n_cb
    y = rb * ROWS + tl.arange(0, ROWS)
    g = (tile - rb * n_cb) * (BLOCK_W // 4) + tl.arange(0, BLOCK_W // 4)
    x = 4 * g[:, None] + tl.arange(0, 4)[None, :]
    return y, g, x, (y[:, None, None] < h) & (x[None, :, :] < w)


@triton.jit
def _word(words, j, word, n_words):
    """Word ``j`` of each group (as uint64), 0 outside the frames (only out-of-crop pixels read there)."""
    ok = (word + j >= 0) & (word + j < n_words)
    return tl.load(words + j, mask=ok, other=0).to(tl.uint64)


@triton.jit
def _lanes(p0, p1, p2, p3, flip, ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    """Source pixels 0..3 of each group -> [ROWS, groups, 4] fp32 in 0..1, output order (flipped: reversed);
    join + reshape keep the 4 in one thread, so the stores stay vectors with no shared-memory shuffle."""
    a = tl.join(tl.where(flip, p3, p0), tl.where(flip, p1, p2))
    b = tl.join(tl.where(flip, p2, p1), tl.where(flip, p0, p3))
    return tl.reshape(tl.join(a, b), [ROWS, BLOCK_W // 4, 4]).to(tl.float32) * (1.0 / 255.0)


@triton.jit
def _load_rgb(frames_ptr, n_words, src_base, r, y, g, W, w, ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    """The tile's pixels of the (flipped) crop as three fp32 [ROWS, groups, 4] planes in 0..1.

    A group's 12 RGB bytes start at any byte offset (crop left, row stride 3 W), so they are read as the four
    32-bit words around them (4 loads per 4 pixels instead of 12 byte loads), funnel-shifted into place and
    split. The frames buffer is 4-byte aligned and a multiple of 4 bytes long (``pace_jitter_triton``)."""
    flip = tl.load(r + 2) != 0
    xs = tl.load(r + 1) + tl.where(flip, w - 4 - 4 * g, 4 * g)  # the first source pixel of each group
    byte = src_base + (y[:, None] * W + xs[None, :]).to(tl.int64) * 3
    word = byte >> 2
    shift = ((byte & 3) * 8).to(tl.uint64)
    words = frames_ptr.to(tl.pointer_type(tl.uint32)) + word
    w0, w1 = _word(words, 0, word, n_words), _word(words, 1, word, n_words)
    w2, w3 = _word(words, 2, word, n_words), _word(words, 3, word, n_words)
    v0 = (((w1 << 32) | w0) >> shift).to(tl.uint32)  # bytes 0-3 of the group: R0 G0 B0 R1
    v1 = (((w2 << 32) | w1) >> shift).to(tl.uint32)  # G1 B1 R2 G2
    v2 = (((w3 << 32) | w2) >> shift).to(tl.uint32)  # B2 R3 G3 B3
    red = _lanes(v0 & 255, v0 >> 24, (v1 >> 16) & 255, (v2 >> 8) & 255, flip, ROWS, BLOCK_W)
    green = _lanes((v0 >> 8) & 255, v1 & 255, v1 >> 24, (v2 >> 16) & 255, flip, ROWS, BLOCK_W)
    blue = _lanes((v0 >> 16) & 255, (v1 >> 8) & 255, v2 & 255, v2 >> 24, flip, ROWS, BLOCK_W)
    return red, green, blue


@triton.jit
def _f32(ptr):
    """An fp32 stored as its bits in the int32 record."""
    return tl.load(ptr).to(tl.float32, bitcast=True)


@triton.jit
def _ops(red, green, blue, r, first, last, mean):
    """This frame's ops ``first`` .. ``last - 1`` in its order (a runtime loop: one copy of the op code)."""
    for k in range(first, last):
        op = tl.load(r + 4 + k)
        red, green, blue = _apply_op(red, green, blue, op, _f32(r + 8 + op), mean)
    return red, green, blue


# Programs: (output frame, slice of its tiles), so a batch fills the GPU however few frames it has. The gray
# mean contrast blends with needs the whole frame, so it is a first launch of per-slice partial sums (fixed
# order: deterministic). Only the crop width is specialised (16-divisible widths give 16-byte output stores).
@triton.jit(do_not_specialize=["n_words", "F", "H", "W", "T", "h", "n_cb", "n_tiles", "S"])
def _gray_sum_kernel(frames_ptr, index_ptr, rec_ptr, part_ptr, n_words, F, H, W, T, h, w, n_cb, n_tiles, S,
                     ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    f = tl.program_id(0)
    s = tl.program_id(1)
    r, _bi, src_base, jitter = _frame(index_ptr, rec_ptr, f, T, F, H, W)
    total = tl.zeros([], dtype=tl.float32)
    if jitter:  # the gray level after the ops that precede contrast in this frame's order
        o0, o1, o2 = tl.load(r + 4), tl.load(r + 5), tl.load(r + 6)
        n_before = tl.where(o0 == _CONTRAST, 0, tl.where(o1 == _CONTRAST, 1, tl.where(o2 == _CONTRAST, 2, 3)))
        acc = tl.zeros([ROWS, BLOCK_W // 4, 4], dtype=tl.float32)
        for i in range(n_tiles):
            y, g, _x, mask = _tile(s * n_tiles + i, n_cb, h, w, ROWS, BLOCK_W)
            red, green, blue = _load_rgb(frames_ptr, n_words, src_base, r, y, g, W, w, ROWS, BLOCK_W)
            red, green, blue = _ops(red, green, blue, r, 0, n_before, 0.0)
            acc += tl.where(mask, _gray(red, green, blue), 0.0)
        total = tl.sum(tl.sum(tl.sum(acc, axis=2), axis=1), axis=0)
    tl.store(part_ptr + f * S + s, total)


@triton.jit(do_not_specialize=["n_words", "F", "H", "W", "T", "h", "n_cb", "n_tiles", "S"])
def _pace_jitter_kernel(frames_ptr, index_ptr, rec_ptr, part_ptr, out_ptr, n_words, F, H, W, T, h, w, n_cb,
                        n_tiles, S, ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    f = tl.program_id(0)
    s = tl.program_id(1)
    r, bi, src_base, jitter = _frame(index_ptr, rec_ptr, f, T, F, H, W)
    plane = tl.zeros([], dtype=tl.int64) + h * w  # (an AOT or JIT variant may make a size constexpr 1)
    mean = tl.zeros([], dtype=tl.float32)
    if jitter:
        for j in range(S):
            mean += tl.load(part_ptr + f * S + j)
        mean = mean / plane.to(tl.float32)
    n_ops = tl.where(jitter, 4, 0)
    m0, m1, m2 = _f32(rec_ptr), _f32(rec_ptr + 1), _f32(rec_ptr + 2)  # the record's head: mean, std
    s0, s1, s2 = _f32(rec_ptr + 3), _f32(rec_ptr + 4), _f32(rec_ptr + 5)
    out_base = (bi.to(tl.int64) * 3 * T + (f - bi * T)) * plane
    ty = out_ptr.dtype.element_ty
    for i in range(n_tiles):
        y, g, x, mask = _tile(s * n_tiles + i, n_cb, h, w, ROWS, BLOCK_W)
        red, green, blue = _load_rgb(frames_ptr, n_words, src_base, r, y, g, W, w, ROWS, BLOCK_W)
        red, green, blue = _ops(red, green, blue, r, 0, n_ops, mean)
        dst = out_ptr + out_base + (y[:, None, None] * w + x[None, :, :])
        tl.store(dst, ((red - m0) / s0).to(ty), mask=mask)
        tl.store(dst + T * plane, ((green - m1) / s1).to(ty), mask=mask)
        tl.store(dst + 2 * T * plane, ((blue - m2) / s2).to(ty), mask=mask)


def _pack(params: JitterParams, mean_t: Tensor, std_t: Tensor) -> Tensor:
    """The launch record of validated CPU params (layout above) as one int32 CPU tensor."""
    B, T = params.apply.shape
    head = torch.zeros(HEAD_WORDS, dtype=torch.int32)
    head[:6] = torch.cat([mean_t, std_t]).view(torch.int32)
    per_frame = torch.cat([params.crop_yx.int()[:, None].expand(B, T, 2), params.flip.int()[:, None, None]
                           .expand(B, T, 1), params.apply.int()[..., None], params.order.int(),
                           params.factors.contiguous().view(torch.int32)], dim=-1)
    return torch.cat([head, per_frame.reshape(-1)])


def _word_aligned(frames: Tensor) -> Tensor:
    """The frames as the kernels read them, 32-bit words: contiguous, 4-byte aligned, a multiple of 4 bytes
    long (a padded copy otherwise; a batch of frames from a loader already is)."""
    frames = frames.contiguous()
    pad = -frames.numel() % 4
    if pad == 0 and frames.data_ptr() % 4 == 0:
        return frames
    buf = torch.empty(frames.numel() + pad, dtype=frames.dtype, device=frames.device)
    buf[:frames.numel()].copy_(frames.view(-1))
    return buf


def _plan(frames: int, h: int, w: int, device: torch.device, config: dict | None) -> dict:
    """Tile shape, programs per frame and warps: ``config`` (``BLOCK_W``, ``ROWS``, ``num_warps``, optional
    ``n_tiles``) if given; under the interpreter one tile per frame (each interpreted op costs ~0.1 ms
    whatever its size); on a GPU 1024-pixel tiles, and enough programs per frame for ``_PROGRAMS_PER_SM``
    programs on each SM of the device."""
    if config is None and device.type == "cpu":
        bw = max(4, triton.next_power_of_2(w))
        config = dict(BLOCK_W=bw, ROWS=min(triton.next_power_of_2(h), max(1, (1 << 16) // bw)), num_warps=4)
    if config is None:
        bw = next((b for b in _BLOCK_WS if b >= w), _BLOCK_WS[-1])
        config = dict(BLOCK_W=bw, ROWS=_TILE_PIXELS // bw, num_warps=4)
    n_cb = triton.cdiv(w, config["BLOCK_W"])
    tiles = triton.cdiv(h, config["ROWS"]) * n_cb
    per_frame = min(tiles, triton.cdiv(sm_count(device) * _PROGRAMS_PER_SM, max(frames, 1)))
    n_tiles = config.get("n_tiles") or triton.cdiv(tiles, per_frame)
    return dict(config, n_cb=n_cb, n_tiles=n_tiles, S=triton.cdiv(tiles, n_tiles))


def pace_jitter_triton(frames: Tensor, index_map: Tensor, params: JitterParams, mean_t: Tensor, std_t: Tensor,
                       out_dtype: torch.dtype, config: dict | None = None) -> Tensor:
    """Launch the kernels on arguments ``validate`` accepted (CPU ``params``, ``mean_t``/``std_t`` its return
    values): the record goes to the device in one non-blocking copy and nothing is read back. ``config``
    (``BLOCK_W``, ``ROWS``, ``num_warps``[, ``n_tiles``]) overrides the planned tiles."""
    B, F, H, W, _ = frames.shape
    T = index_map.shape[1]
    h, w = params.crop_hw
    dev = frames.device
    out = torch.empty(B, 3, T, h, w, dtype=out_dtype, device=dev)
    if out.numel() == 0:
        return out
    plan = _plan(B * T, h, w, dev, config)
    rec = to_device(_pack(params, mean_t, std_t), dev)
    part = torch.empty(B * T * plan["S"], dtype=torch.float32, device=dev)
    words = _word_aligned(frames)
    sizes = (words.numel() // 4, F, H, W, T, h, w, plan["n_cb"], plan["n_tiles"], plan["S"])
    common = (words, index_map.to(torch.int32).contiguous(), rec, part)
    meta = dict(ROWS=plan["ROWS"], BLOCK_W=plan["BLOCK_W"], num_warps=plan["num_warps"])
    name = f"{h}x{w} {TRITON_DTYPES[out_dtype]}"
    grid = (B * T, plan["S"])
    if bool(params.apply.any()):  # (a CPU tensor: no sync) without jitter no frame needs its gray mean
        launch(Launch(f"[gray_sum {h}x{w}]", _gray_sum_kernel, grid, (*common, *sizes), meta), dev)
    launch(Launch(f"[pace_jitter {name}]", _pace_jitter_kernel, grid, (*common, out, *sizes), meta), dev)
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
    ``params`` belong on the CPU, where ``vpace.augment.sample_params`` draws them: they are validated there
    and reach the GPU in one non-blocking copy, so the Triton path never waits for the GPU (params on a device
    are copied back first, which does). ``mean``/``std`` default to 0 / 1. Input preprocessing: no autograd.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    if not isinstance(params, JitterParams):
        raise ValueError(f"params: expected a JitterParams record, got {type(params).__name__}")
    params = params.to("cpu")
    mean_t, std_t = validate(frames, index_map, params, mean, std, out_dtype)
    backend = backend or pick_backend(frames)
    if backend == "triton":
        if not triton_can_run(frames, _pace_jitter_kernel) and frames.device.type != "meta":
            raise ValueError("backend: 'triton' needs CUDA tensors or TRITON_INTERPRET=1 set before import")
        return pace_jitter_triton(frames, index_map, params, mean_t, std_t, out_dtype)
    if backend == "eager":
        return pace_jitter_eager(frames, index_map, params, mean_t, std_t, out_dtype)
    if frames.device.type != "cpu":
        raise ValueError(f"backend: 'cpu' is the CPU path, but frames are on {frames.device}")
    return pace_jitter_cpu(frames, index_map, params, mean_t, std_t, out_dtype)


# (B, F = T, H, W, crop) shipped: the paper's 112 from 128x171, S3D-G's 224 from 256x340, smaller test crops
SHIPPED_SHAPES = ((30, 16, 128, 171, 112), (64, 16, 256, 340, 224), (8, 8, 64, 80, 56), (8, 8, 36, 44, 32))


def shipped_launches(arch: int = PLANNING_ARCH, dtypes: tuple[torch.dtype, ...] = (torch.float32,
                                                                                    torch.bfloat16)) -> list:
    """The launches ``pace_jitter`` makes on ``sm_<arch>`` for the shipped shapes and ``dtypes`` (the paper's
    two sizes in each; the small crops in the first), recorded on ``meta`` tensors through the real path."""
    out = []
    with recording(arch) as launches:
        for i, (b, f, hh, ww, crop) in enumerate(SHIPPED_SHAPES):
            for dtype in dtypes if i < 2 else dtypes[:1]:
                frames = torch.empty(b, f, hh, ww, 3, dtype=torch.uint8, device="meta")
                index_map = torch.empty(b, f, dtype=torch.int64, device="meta")
                params = _planning_params(b, f, crop)
                pace_jitter(frames, index_map, params, out_dtype=dtype, backend="triton")
        out += {rec.name: rec for rec in launches}.values()  # (the gray sums do not depend on the out dtype)
    return out


def _planning_params(b: int, t: int, crop: int) -> JitterParams:
    """A valid record with every frame jittered (both launches run)."""
    factors = torch.ones(b, t, 4)
    factors[..., HUE] = 0.0
    return JitterParams(crop_yx=torch.zeros(b, 2, dtype=torch.int32), crop_hw=(crop, crop),
                        flip=torch.zeros(b, dtype=torch.bool), apply=torch.ones(b, t, dtype=torch.bool),
                        factors=factors, order=torch.arange(4, dtype=torch.int32).repeat(b, t, 1))
