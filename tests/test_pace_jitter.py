"""Fused pace/jitter op: every version (Triton, the C kernel, batched eager) vs the torchvision reference.

Each case runs on the devices present (conftest): on CPU the Triton kernel runs in Triton's interpreter; with
CUDA it runs compiled on the GPU. The reference is always computed on CPU (the ground truth) and outputs are
compared there. Errors are in 0..1 pixel units (before normalization): ``(out - ref) * std``.
"""

import itertools
import re

import pytest
import torch
import torchvision.transforms.v2 as T2
import torchvision.transforms.v2.functional as TF
from conftest import HAS_CUDA, NO_CUDA, on_devices
from test_aot import aot_or_skip

from benchmarks.gpu_check import TWO_GPUS
from vpace.config import KINETICS_MEAN, KINETICS_STD
from vpace_kernels import pace_jitter as PJ
from vpace_kernels import pace_jitter_cpu as PJC
from vpace_kernels.pace_jitter_spec import JitterParams, validate

MEAN, STD = KINETICS_MEAN, KINETICS_STD
STD_T = torch.tensor(STD).view(1, 3, 1, 1, 1)
TOL = 1e-4  # fp32, 0..1 units
# (device, backend): "cpu" is the C kernel, "eager" batched torch (any device), "triton" the fused kernel.
BACKENDS = on_devices(cpu=("triton", "cpu", "eager"), cuda=("triton", "eager"))


def _params(B, T, H, W, h, w, g, *, strong=True, orders=None) -> JitterParams:
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
    return JitterParams(torch.stack([top, left], 1).int(), (h, w), flip, apply, fac, orders.int())


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


def _run(device, backend, frames, index_map, params, out_dtype=torch.float32, config=None):
    """The op on ``device`` with params on the CPU, where they are drawn (output moved back to the CPU);
    ``config``: a Triton tiling to force."""
    frames, index_map = frames.to(device), index_map.to(device)
    if config is None:
        out = PJ.pace_jitter(frames, index_map, params, MEAN, STD, out_dtype, backend=backend)
    else:
        mean_t, std_t = validate(frames, index_map, params, MEAN, STD, out_dtype)
        out = PJ.pace_jitter_triton(frames, index_map, params, mean_t, std_t, out_dtype, config)
    assert out.device == torch.device(device)
    return out.cpu()


# Forced tilings: several programs per frame (each summing a slice of the gray mean), several tiles per
# program, column blocks narrower than the crop; the interpreter runs the first (it is slow per program).
TILINGS = [dict(BLOCK_W=32, ROWS=16, num_warps=4, n_tiles=2),
           dict(BLOCK_W=16, ROWS=8, num_warps=2, n_tiles=1),
           dict(BLOCK_W=64, ROWS=4, num_warps=4, n_tiles=3)]


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
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_matches_reference_odd_sizes_repeats_flip(device, backend):
    frames, index_map, p = _case()
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    out = _run(device, backend, frames, index_map, p)
    assert out.shape == (2, 3, 7, 37, 53) and out.dtype == torch.float32 and out.is_contiguous()
    assert _err(out, ref) <= TOL


@pytest.mark.parametrize("device, backend", on_devices(cpu=("triton",), cuda=("triton",)))
def test_several_programs_per_frame(device, backend):
    """Frames split over programs (and column blocks, and tiles per program): the gray mean summed from
    per-slice partials gives the reference. CUDA: every tiling in fp32 and bf16 out; the interpreter (slow
    per program): the first tiling, fp32 (3 programs per frame, 2 tiles each, 2 column blocks)."""
    frames, index_map, p = _case(T=3, seed=8)
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    cuda = device == "cuda"
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    for cfg, dt in itertools.product(TILINGS if cuda else TILINGS[:1], dtypes):
        out = _run(device, backend, frames, index_map, p, dt, config=cfg)
        assert _err(out, ref) <= (TOL if dt == torch.float32 else _half_tol(ref, dt)), (cfg, dt)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=TWO_GPUS if HAS_CUDA else NO_CUDA)
def test_launches_on_the_frames_device():
    """Frames on cuda:1 while cuda:0 is current: the kernels run on cuda:1 (its device guard) and match."""
    torch.cuda.set_device(0)
    frames, index_map, p = _case(seed=13)
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run("cuda:1", "triton", frames, index_map, p), ref) <= TOL
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_crops_at_the_first_and_last_byte_of_the_frames(device, backend):
    """Crop boxes at the top-left of the first frame (flipped: its 4-pixel groups reach left of byte 0) and
    the bottom-right of the last (its words reach past the last byte), odd widths, 3 W not a multiple of 4."""
    frames, index_map, p = _case(B=2, F=2, H=9, W=15, T=3, h=5, w=7, seed=14)
    index_map[0], index_map[1] = 0, 1
    p.crop_yx[0], p.crop_yx[1] = torch.tensor([0, 0]), torch.tensor([9 - 5, 15 - 7])
    p.flip[:] = torch.tensor([True, False])
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run(device, backend, frames, index_map, p), ref) <= TOL


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_every_op_order(device, backend):
    """All 24 permutations, one per frame, every frame jittered with strong factors."""
    orders = torch.tensor(list(itertools.permutations(range(4)))).view(2, 12, 4)
    frames, index_map, p = _case(B=2, F=6, H=24, W=31, T=12, h=19, w=29, seed=2, orders=orders)
    p.apply[:] = True
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run(device, backend, frames, index_map, p), ref) <= TOL


def _hue_wrap_frames() -> torch.Tensor:
    """Colors whose hue sits at or next to 0 == 1 (reds leaning to magenta or yellow), plus grays."""
    colors = [(255, 0, 0), (255, 0, 1), (255, 1, 0), (254, 0, 3), (200, 0, 1), (1, 0, 0), (255, 254, 254),
              (128, 128, 128), (255, 0, 255), (255, 255, 0), (0, 0, 1)]
    px = torch.tensor(colors, dtype=torch.uint8)
    img = px[torch.arange(17 * 19) % len(colors)].view(17, 19, 3)
    return torch.stack([img, img.flip(0), img.flip(1)])[None].repeat(2, 1, 1, 1, 1)  # [2, 3, 17, 19, 3]


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_hue_wrap_near_zero_and_one(device, backend):
    frames, index_map, p = _case(frames=_hue_wrap_frames(), T=6, h=15, w=17, seed=3)
    p.apply[:] = True
    p.factors[..., 3] = torch.tensor([-0.5, -1e-3, 0.0, 1e-3, 0.25, 0.5]).repeat(2, 1)  # wrap both ways
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run(device, backend, frames, index_map, p), ref) <= TOL


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_black_and_white_frames(device, backend):
    """Zero chroma everywhere (torchvision's divide-by-zero guards) and a zero gray mean for contrast."""
    frames = torch.zeros(2, 3, 12, 14, 3, dtype=torch.uint8)
    frames[:, 1] = 255
    frames[:, 2, :, 7:] = 255  # half black, half white
    frames, index_map, p = _case(frames=frames, T=5, h=10, w=11, seed=4)
    p.apply[:] = True
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    assert _err(_run(device, backend, frames, index_map, p), ref) <= TOL


def _half_tol(ref: torch.Tensor, out_dtype: torch.dtype) -> float:
    """Max error in 0..1 units of a 16-bit output: one rounding of the normalized value, plus the fp32 TOL."""
    return (torch.finfo(out_dtype).eps * ref.abs().max().item() + TOL / min(STD)) * max(STD)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device, backend", BACKENDS)
def test_half_outputs_within_their_precision(device, backend, out_dtype):
    frames, index_map, p = _case(seed=5)
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)  # fp32 ground truth
    out = _run(device, backend, frames, index_map, p, out_dtype)
    assert out.dtype == out_dtype
    eps = torch.finfo(out_dtype).eps  # one rounding of the normalized value, plus the fp32 tolerance
    assert ((out.float() - ref).abs() <= eps * ref.abs() + TOL / min(STD)).all()


@pytest.mark.parametrize("device, backend", on_devices(cpu=("cpu", "eager"), cuda=("triton", "eager")))
def test_no_jitter_is_crop_flip_normalize(device, backend):
    """apply all False (the eval transform): gather + crop + flip + normalize only, factors ignored."""
    frames, index_map, p = _case(seed=6)
    p.apply[:] = False
    out = _run(device, backend, frames, index_map, p)
    x = frames[1, index_map[1, 3]].permute(2, 0, 1).float() / 255
    (top, left), (h, w) = p.crop_yx[1].tolist(), p.crop_hw
    x = x[:, top:top + h, left:left + w].flip(-1)  # clip 1 is flipped
    torch.testing.assert_close(out[1, :, 3], (x - torch.tensor(MEAN)[:, None, None]) / STD_T[0, :, 0])
    assert _err(out, PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)) <= 1e-6


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H, W, crop, B", [(128, 171, 112, 3), (256, 340, 224, 2)])
@pytest.mark.parametrize("device, backend", on_devices(cpu=(), cuda=("triton", "eager")))
def test_paper_sizes(device, backend, H, W, crop, B, out_dtype):
    """The training shapes (112 crops from 128x171, 224 from 256x340), 16 frames at mixed paces (every kernel
    config the size picks, many tiles per frame); CUDA only: the interpreter would take minutes here."""
    g = torch.Generator().manual_seed(12)
    frames = torch.randint(0, 256, (B, 16, H, W, 3), dtype=torch.uint8, generator=g)
    frames, index_map, p = _case(frames=frames, T=16, h=crop, w=crop, seed=12)
    ref = PJ.pace_jitter_reference(frames, index_map, p, MEAN, STD)
    out = _run(device, backend, frames, index_map, p, out_dtype)
    assert out.shape == (B, 3, 16, crop, crop) and out.dtype == out_dtype
    assert _err(out, ref) <= (TOL if out_dtype == torch.float32 else _half_tol(ref, out_dtype))


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
    assert _err(_run("cpu", "cpu", frames, index_map.int(), p), ref) <= TOL


def test_cpu_kernel_threads_and_strided_input():
    """Frames split over threads give bit-identical results; a non-contiguous frames view is accepted."""
    g = torch.Generator().manual_seed(10)
    big = torch.randint(0, 256, (3, 5, 45, 70, 3), dtype=torch.uint8, generator=g)
    frames = big[::2, 1:, 2:43, 5:65]
    frames, index_map, p = _case(frames=frames, T=9, h=37, w=53, seed=10)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("cpu", "cpu", frames, index_map, p)
        torch.set_num_threads(2)
        two = _run("cpu", "cpu", frames, index_map, p)
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
        out = _run("cpu", "cpu", frames, index_map, p)
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
@pytest.mark.parametrize("arch", [80, 90])
def test_launched_variants_compile_for_sm80_and_sm90(arch):
    """AOT (no GPU needed) of what runs: the launches of the shipped shapes (fp32 and bf16 out at the paper's
    sizes), recorded on meta tensors and compiled with the JIT's specialisation -> PTX + cubin, zero spills;
    pixels are read as 32-bit words (4 loads per 4 pixels) and 16-divisible crop widths store 4 pixels per
    vector store without a shared-memory shuffle; at the paper's batch (30 x 16 frames of 112x112) the
    grid is at least a full wave of resident programs on the GPU planned for (132 SMs on sm_90)."""
    launches = PJ.shipped_launches(arch)
    assert {rec.name.split()[0] for rec in launches} == {"[gray_sum", "[pace_jitter"}
    for rec, _, res in aot_or_skip(launches, arch):
        entry = f".entry {getattr(rec.fn, 'fn', rec.fn).__name__}"
        assert res.cubin[:4] == b"\x7fELF" and entry in res.ptx, rec.name
        assert res.spill_bytes == 0 and res.num_warps == rec.kwargs["num_warps"], (rec.name, res.registers)
        loads = set(re.findall(r"ld\.global[.\w]*", res.ptx))
        assert loads and all(ld.endswith("32") for ld in loads), (rec.name, loads)  # words, no byte loads
        crop = int(rec.name.split()[1].split("x")[1].rstrip("]"))
        if rec.name.startswith("[pace_jitter") and crop % 16 == 0:  # 16 B (fp32) / 8 B (bf16), no smem
            assert re.search(r"st\.global\.v[24]\.b32", res.ptx) and res.shared == 0, rec.name
        if "112x112" in rec.name:
            programs = rec.grid[0] * rec.grid[1]
            assert rec.grid[0] == 30 * 16 and programs >= {80: 108, 90: 132}[arch] * res.blocks_per_sm
