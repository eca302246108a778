"""Seeded sampling of the augmentation record (torchvision ColorJitter semantics) and the eval transform."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vpace.augment import augment, center_params, sample_params
from vpace.config import KINETICS_MEAN, KINETICS_STD, AugmentConfig
from vpace_kernels.pace_jitter import pace_jitter_reference
from vpace_kernels.pace_jitter_spec import validate_params


def _draw(seed=0, B=400, T=8, H=128, W=171, **kw):
    return sample_params(B, T, H, W, generator=torch.Generator().manual_seed(seed), **kw)


def test_record_layout_and_reproducibility():
    p = _draw(B=5, T=7)
    assert p.crop_yx.shape == (5, 2) and p.crop_yx.dtype == torch.int32 and p.crop_hw == (112, 112)
    assert p.flip.shape == (5,) and p.flip.dtype == torch.bool
    assert p.apply.shape == (5, 7) and p.apply.dtype == torch.bool
    assert p.factors.shape == (5, 7, 4) and p.factors.dtype == torch.float32
    assert p.order.shape == (5, 7, 4) and p.order.dtype == torch.int32
    q, r = _draw(B=5, T=7), _draw(seed=1, B=5, T=7)
    for name in ("crop_yx", "flip", "apply", "factors", "order"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name
    assert not torch.equal(p.factors, r.factors)


def test_draws_are_cpu_records_the_op_accepts():
    """Drawn on the CPU (where the op validates them before one copy to the GPU), whatever device trains;
    both draws pass the contract's checks for the batch they were drawn for."""
    for p in (_draw(B=6, T=5), center_params(6, 5, 128, 171)):
        fields = ("crop_yx", "flip", "apply", "factors", "order")
        assert {getattr(p, k).device.type for k in fields} == {"cpu"}
        validate_params(p, 6, 5, 128, 171)


def test_colorjitter_sampling_semantics():
    """Factors uniform in [max(0, 1-x), 1+x], hue in [-h, h], a uniform random order, RandomApply(p)."""
    p = _draw(brightness=0.8, contrast=1.5, saturation=0.3, hue=0.2, jitter_p=0.8, flip_p=0.5)
    f = p.factors
    for i, (lo, hi) in enumerate([(0.2, 1.8), (0.0, 2.5), (0.7, 1.3), (-0.2, 0.2)]):
        assert lo <= f[..., i].min() and f[..., i].max() <= hi
        assert f[..., i].min() < lo + 0.05 * (hi - lo) and f[..., i].max() > hi - 0.05 * (hi - lo)  # spans it
    assert torch.equal(p.order.sort(-1).values, torch.arange(4, dtype=torch.int32).expand_as(p.order))
    first_op = torch.bincount(p.order[..., 0].flatten().long(), minlength=4).float() / p.order[..., 0].numel()
    assert (first_op - 0.25).abs().max() < 0.03  # 3200 frames: every op leads ~1/4 of the time
    assert abs(p.apply.float().mean().item() - 0.8) < 0.03
    assert abs(p.flip.float().mean().item() - 0.5) < 0.1
    assert p.crop_yx[:, 0].min() == 0 and p.crop_yx[:, 0].max() == 128 - 112
    assert p.crop_yx[:, 1].min() == 0 and p.crop_yx[:, 1].max() == 171 - 112


def test_per_frame_vs_per_clip():
    per_frame, per_clip = _draw(B=50), _draw(B=50, per_frame=False)
    assert (per_frame.factors != per_frame.factors[:, :1]).any()
    for name in ("apply", "factors", "order"):
        t = getattr(per_clip, name)
        assert torch.equal(t, t[:, :1].expand_as(t)), name


def test_zero_strength_disables_an_op_and_config_object_is_accepted():
    p = _draw(B=20, brightness=0.0, hue=0.0)
    assert (p.factors[..., 0] == 1).all() and (p.factors[..., 3] == 0).all()
    cfg = AugmentConfig(crop=64, flip_p=0.0, jitter_p=1.0, brightness=0.1, contrast=0.2, saturation=0.3,
                        hue=0.1, per_frame=False)
    a = sample_params(6, 4, 80, 90, cfg, generator=torch.Generator().manual_seed(3))
    b = _draw(seed=3, B=6, T=4, H=80, W=90, crop=64, flip_p=0.0, jitter_p=1.0, brightness=0.1, contrast=0.2,
              saturation=0.3, hue=0.1, per_frame=False)
    assert a.crop_hw == (64, 64) and not a.flip.any() and a.apply.all()
    assert torch.equal(a.factors, b.factors) and torch.equal(a.crop_yx, b.crop_yx)


@pytest.mark.parametrize("kw, match", [
    (dict(crop=129), "crop: 129x129 is larger than the frames 128x171"),
    (dict(crop=0), "crop"),
    (dict(hue=0.6), "hue"),
    (dict(contrast=-0.1), "contrast"),
    (dict(flip_p=1.5), "flip_p"),
])
def test_bad_settings_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        _draw(B=2, **kw)
    if "crop" in kw:
        with pytest.raises(ValueError, match=match):
            center_params(2, 4, 128, 171, crop=kw["crop"])


def test_center_params_is_torchvision_center_crop_and_normalize():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, 21, 30, 3), dtype=torch.uint8, generator=g)
    index_map = torch.tensor([[0, 1, 2, 2], [2, 1, 0, 0]])
    out = augment(frames, index_map, center_params(2, 4, 21, 30, crop=15))
    for b in range(2):
        video = TF.to_dtype(frames[b, index_map[b]].permute(0, 3, 1, 2), torch.float32, scale=True)
        expect = TF.normalize(TF.center_crop(video, [15, 15]), list(KINETICS_MEAN), list(KINETICS_STD))
        torch.testing.assert_close(out[b], expect.permute(1, 0, 2, 3), rtol=0, atol=1e-5)


def test_augment_replays_the_record_through_the_fused_op():
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 3, 20, 26, 3), dtype=torch.uint8, generator=g)
    index_map = torch.tensor([[0, 0, 1, 2], [1, 2, 2, 0]])
    p = sample_params(2, 4, 20, 26, crop=16, generator=g)
    out = augment(frames, index_map, p, out_dtype=torch.float32)
    ref = pace_jitter_reference(frames, index_map, p, KINETICS_MEAN, KINETICS_STD)
    assert out.shape == (2, 3, 4, 16, 16)
    assert ((out - ref) * torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)).abs().max() <= 1e-4
