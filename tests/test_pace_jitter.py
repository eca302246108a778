"""Fused pace/jitter op: Triton kernel (interpreter) and CPU paths vs the eager torchvision reference.

Errors are compared in 0..1 pixel units (before normalization): ``(out - ref) * std``.
"""

import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the kernel runs on CPU tensors

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.v2 as T2  # noqa: E402
import torchvision.transforms.v2.functional as TF  # noqa: E402

from vpace_kernels import pace_jitter as PJ  # noqa: E402
from vpace_kernels import pace_jitter_cpu as PJC  # noqa: E402

MEAN, STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
STD_T = torch.tensor(STD).view(1, 3, 1, 1, 1)
TOL = 1e-4  # fp32, 0..1 units
needs_interpreter = pytest.mark.skipif(
    not PJ._interpreted(),
    reason="triton was imported before TRITON_INTERPRET was set: the Triton kernel cannot run on CPU")


def _params(B, T, H, W, h, w, g, *, strong=True, orders=None) -> PJ.JitterParams:
    """Random record: crops anywhere (incl. the borders), flips, ~80% jittered frames, wide factor ranges."""
    top = torch.randint(0, H - h + 1, (B,), generator=g)
    left = torch.randint(0, W - w + 1, (B,), generator=g)
    top[0], left[0] = H - h, W - w  # one box touching the bottom-right border
    fac = torch.rand(B, T, 4, generator=g) * (1.8 if strong else 1.6) + (0.0 if strong else 0.2)
    fac[..., 3] = torch.rand(B, T, generator=g) - 0.5
    if orders is None:
        orders = torch.rand(B, T, 4, generator=g).argsort(-1)
    apply = torch.rand(B, T, generator=g) < 0.8
    apply[0, 0] = False
    flip = torch.arange(B) % 2 == 1
    return PJ.JitterParams(torch.stack([top, left], 1).int(), (h, w), flip, apply, fac, orders.int())


def _case(B=2, F=4, H=41, W=60, T=7, h=37, w=53, seed=0, frames=None, **kw):
    """Odd sizes, T not a power of two, slow-pace repeats in index_map."""
    g = torch.Generator().manual_seed(seed)
    if frames is None:
        frames = torch.randint(0, 256, (B, F, H, W, 3), dtype=torch.uint8, generator=g)
    B, F, H, W, _ = frames.shape
    index_map = (torch.arange(T) // 2 % F).repeat(B, 1)  # pace 1/2: 0, 0, 1, 1, 2, ...
    index_map[-1] = torch.randint(0, F, (T,), generator=g)
    return frames, index_map, _params(B, T, H, W, h, w, g, **kw)


def _err(out, ref):
    return ((out.float() - ref.float()) * STD_T).abs().max().item()


def _run(backend, frames, index_map, params, out_dtype=torch.float32, config=None):
    if backend == "triton_tiles":  # a shipped multi-tile config, not the interpreter's one tile per frame
        mean_t, std_t = PJ.validate(frames, index_map, params, MEAN, STD, out_dtype)
        cfg = PJ.KERNEL_CONFIGS[0]
        return PJ._pace_jitter_triton(frames, index_map, params, mean_t, std_t, out_dtype, cfg)
    return PJ.pace_jitter(frames, index_map, params, MEAN, STD, out_dtype, backend=backend)


# "cpu": the C kernel (built once, sizes are runtime arguments); "cpu_eager": the plain-torch fallback.
BACKENDS = [pytest.param("triton", marks=needs_interpreter), "cpu", "cpu_eager"]


# ----------------------------------------------------------------------------------------- reference itself
def test_reference_matches_torchvision_colorjitter_on_whole_clips():
    """Independent check of the reference: torchvision's own ColorJitter.transform applied to each whole clip
    (one parameter set per clip, a [T, 3, h, w] video at once), crop/flip/normalize from v2 on the batch."""
    frames, index_map, p = _case(B=3, T=5, seed=1)
    p.apply[:] = p.apply[:, :1]
    p.factors[:] = p.factors[:, :1]
    p.order[:] = p.order[:, :1]
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    jitter = T2.ColorJitter(0.5, 0.5, 0.5, 0.5)
    for b in range(3):
        video = TF.to_dtype(frames[b, index_map[b]].permute(0, 3, 1, 2), torch.float32, scale=True)
        video = TF.crop(video, int(p.crop_yx[b, 0]), int(p.crop_yx[b, 1]), *p.crop_hw)
        if p.flip[b]:
            video = TF.horizontal_flip(video)
        if p.apply[b, 0]:
            f = p.factors[b, 0].tolist()
            params = dict(fn_idx=p.order[b, 0].tolist(), brightness_factor=f[0], contrast_factor=f[1],
                          saturation_factor=f[2], hue_factor=f[3])
            video = jitter.transform(video, params)
        expect = TF.normalize(video, list(MEAN), list(STD)).permute(1, 0, 2, 3)
        torch.testing.assert_close(ref[b], expect, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- fused vs reference
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_odd_sizes_repeats_flip(backend):
    frames, index_map, p = _case()
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    out = _run(backend, frames, index_map, p)
    assert out.shape == (2, 3, 7, 37, 53) and out.dtype == torch.float32 and out.is_contiguous()
    assert _err(out, ref) <= TOL


@needs_interpreter
def test_shipped_multi_tile_config():
    """The smallest shipped config (256-pixel tiles): 8 tiles per 37x53 frame in both passes."""
    frames, index_map, p = _case(T=3, seed=8)
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run("triton_tiles", frames, index_map, p), ref) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_op_order(backend):
    """All 24 permutations, one per frame, every frame jittered with strong factors."""
    orders = torch.tensor(list(itertools.permutations(range(4)))).view(2, 12, 4)
    frames, index_map, p = _case(B=2, F=6, H=24, W=31, T=12, h=19, w=29, seed=2, orders=orders)
    p.apply[:] = True
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run(backend, frames, index_map, p), ref) <= TOL


def _hue_wrap_frames() -> torch.Tensor:
    """Colors whose hue sits at or next to 0 == 1 (reds leaning to magenta or yellow), plus grays."""
    colors = [(255, 0, 0), (255, 0, 1), (255, 1, 0), (254, 0, 3), (200, 0, 1), (1, 0, 0), (255, 254, 254),
              (128, 128, 128), (255, 0, 255), (255, 255, 0), (0, 0, 1)]
    px = torch.tensor(colors, dtype=torch.uint8)
    img = px[torch.arange(17 * 19) % len(colors)].view(17, 19, 3)
    return torch.stack([img, img.flip(0), img.flip(1)])[None].repeat(2, 1, 1, 1, 1)  # [2, 3, 17, 19, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hue_wrap_near_zero_and_one(backend):
    frames, index_map, p = _case(frames=_hue_wrap_frames(), T=6, h=15, w=17, seed=3)
    p.apply[:] = True
    p.factors[..., 3] = torch.tensor([-0.5, -1e-3, 0.0, 1e-3, 0.25, 0.5]).repeat(2, 1)  # wrap both ways
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run(backend, frames, index_map, p), ref) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_black_and_white_frames(backend):
    """Zero chroma everywhere (torchvision's divide-by-zero guards) and a zero gray mean for contrast."""
    frames = torch.zeros(2, 3, 12, 14, 3, dtype=torch.uint8)
    frames[:, 1] = 255
    frames[:, 2, :, 7:] = 255  # half black, half white
    frames, index_map, p = _case(frames=frames, T=5, h=10, w=11, seed=4)
    p.apply[:] = True
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run(backend, frames, index_map, p), ref) <= TOL


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_outputs_within_their_precision(backend, out_dtype):
    frames, index_map, p = _case(seed=5)
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)  # fp32 ground truth
    out = _run(backend, frames, index_map, p, out_dtype)
    assert out.dtype == out_dtype
    eps = torch.finfo(out_dtype).eps  # one rounding of the normalized value, plus the fp32 tolerance
    assert ((out.float() - ref).abs() <= eps * ref.abs() + TOL / min(STD)).all()


@pytest.mark.parametrize("backend", ["cpu", "cpu_eager"])
def test_no_jitter_is_crop_flip_normalize(backend):
    """apply all False (the eval transform): gather + crop + flip + normalize only, factors ignored."""
    frames, index_map, p = _case(seed=6)
    p.apply[:] = False
    out = PJ.pace_jitter(frames, index_map, p, MEAN, STD, backend=backend)
    x = frames[1, index_map[1, 3]].permute(2, 0, 1).float() / 255
    (top, left), (h, w) = p.crop_yx[1].tolist(), p.crop_hw
    x = x[:, top:top + h, left:left + w].flip(-1)  # clip 1 is flipped
    torch.testing.assert_close(out[1, :, 3], (x - torch.tensor(MEAN)[:, None, None]) / STD_T[0, :, 0])
    assert _err(out, PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)) <= 1e-6


# ----------------------------------------------------------------------------------------- CPU kernel
@pytest.mark.parametrize("B, F, H, W, T, h, w", [
    (1, 1, 5, 4, 1, 5, 4),  # one frame, crop = whole frame
    (2, 2, 3, 1100, 3, 2, 1030),  # rows wider than a tile (1024 pixels), flipped in clip 1
    (3, 5, 40, 24, 2, 39, 1),  # one-pixel-wide crop
    (2, 3, 70, 40, 4, 61, 33),  # several tiles of 31 rows, a partial last tile
])
def test_cpu_kernel_any_shape(B, F, H, W, T, h, w):
    """New shapes need no rebuild (sizes are runtime arguments); tile edges, B = 1, T = 1."""
    frames, index_map, p = _case(B=B, F=F, H=H, W=W, T=T, h=h, w=w, seed=9)
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run("cpu", frames, index_map.int(), p), ref) <= TOL


def test_cpu_kernel_threads_and_strided_input():
    """Frames split over threads give bit-identical results; a non-contiguous frames view is accepted."""
    g = torch.Generator().manual_seed(10)
    big = torch.randint(0, 256, (3, 5, 45, 70, 3), dtype=torch.uint8, generator=g)
    frames = big[::2, 1:, 2:43, 5:65]
    frames, index_map, p = _case(frames=frames, T=9, h=37, w=53, seed=10)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("cpu", frames, index_map, p)
        torch.set_num_threads(2)
        two = _run("cpu", frames, index_map, p)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(one, two)
    assert _err(one, PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)) <= TOL


def test_cpu_kernel_is_cached_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("VPACE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(PJC, "_LIB", {})
    assert PJC.native_library() is not None
    assert len(list(tmp_path.glob("pace_jitter_*.so"))) == 1 and not list(tmp_path.glob("*.c"))
    monkeypatch.setattr(PJC, "_LIB", {})  # a new process: loads the cached build, compiles nothing
    monkeypatch.setattr(PJC, "_compile", lambda *a: pytest.fail("recompiled"))
    assert PJC.native_library() is not None


def test_cpu_falls_back_to_eager_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("VPACE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(PJC, "_LIB", {})
    frames, index_map, p = _case(T=3, seed=11)
    with pytest.warns(RuntimeWarning, match="eager torch path"):
        out = _run("cpu", frames, index_map, p)
    assert _err(out, PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)) <= TOL


# ----------------------------------------------------------------------------------------- bad input
def _bad(**changes):
    frames, index_map, p = _case(B=2, F=3, T=4, seed=7)
    args = dict(frames=frames, index_map=index_map, params=p, mean=MEAN, std=STD, out_dtype=torch.float32)
    for k, v in changes.items():
        if k.startswith("p_"):
            setattr(p, k[2:], v(getattr(p, k[2:])) if callable(v) else v)
        else:
            args[k] = v(args[k]) if callable(v) else v
    return args


@pytest.mark.parametrize("changes, match", [
    (dict(frames=lambda f: f.float()), "frames: expected a uint8"),
    (dict(frames=lambda f: f[..., :2]), r"frames: expected shape \[B, F, H, W, 3\]"),
    (dict(index_map=lambda m: m.float()), "index_map: expected int32/int64"),
    (dict(index_map=lambda m: m[:1]), "index_map"),
    (dict(index_map=lambda m: m + 3), r"index_map: values must be in \[0, 3\)"),
    (dict(index_map=lambda m: m - 1), "index_map: values must be in"),
    (dict(p_crop_yx=lambda c: c + torch.tensor([0, 10], dtype=torch.int32)), "params.crop_yx: crop boxes of"),
    (dict(p_crop_yx=lambda c: c - 5), "params.crop_yx"),
    (dict(p_crop_hw=(42, 53)), "params.crop_hw: crop 42x53 is larger than the frames 41x60"),
    (dict(p_crop_hw=(0, 5)), "params.crop_hw"),
    (dict(p_order=lambda o: torch.zeros_like(o)), "params.order: every"),
    (dict(p_factors=lambda f: f.double()), "params.factors: expected"),
    (dict(p_factors=lambda f: f - 3), "params.factors: brightness"),
    (dict(p_flip=lambda f: f[:1]), "params.flip"),
    (dict(p_apply=lambda a: a.int()), "params.apply"),
    (dict(mean=(0.5, 0.5)), "mean: expected 3"),
    (dict(std=(0.2, 0.0, 0.2)), "std: expected 3 finite positive"),
    (dict(std=(0.2, float("nan"), 0.2)), "std"),
    (dict(out_dtype=torch.int8), "out_dtype"),
])
def test_bad_input_is_named(changes, match):
    args = _bad(**changes)
    with pytest.raises(ValueError, match=match):
        PJ.pace_jitter(**args)
    with pytest.raises(ValueError, match=match):
        PJ.pace_jitter_reference(**args)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        PJ.pace_jitter(**_bad(), backend="numpy")


# ----------------------------------------------------------------------------------------- real GPU code
def test_every_shipped_config_compiles_for_sm80_and_sm90():
    """AOT (no GPU): every config -> PTX + cubin for sm80/sm90 (half outputs: sm90), zero register spills.
    ``make bench`` records all config x dtype x arch combinations."""
    rows = PJ.aot_compile_configs(archs=(80, 90), out_dtypes=(torch.float32,))
    rows += PJ.aot_compile_configs(archs=(90,), out_dtypes=(torch.bfloat16, torch.float16))
    assert len(rows) == len(PJ.KERNEL_CONFIGS) * 4
    for cfg, dt, res in rows:
        assert res.cubin[:4] == b"\x7fELF" and ".entry _pace_jitter_kernel" in res.ptx, (cfg, dt, res.arch)
        assert res.spill_bytes == 0, (cfg, dt, res.arch, res.registers)
        assert res.registers <= 255 and res.num_warps == cfg["num_warps"]
