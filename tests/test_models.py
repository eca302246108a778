"""Backbones: literature sizes, torchvision as the independent reference, the forward_features contract."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision.models import video as tvv
from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

from vpace.models import BACKBONES, build_backbone
from vpace.models.resnet3d import SpatioTemporalConv, mid_channels

SMALL = (2, 3, 8, 32, 32)  # the contract's minimum clip: every backbone must accept it


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def with_4way_head(m) -> int:
    return n_params(m) + n_params(nn.Linear(m.feature_dim, 4))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_names_and_unknown_name() -> None:
    assert BACKBONES == ("c3d", "r3d", "r21d", "s3d_g", "r21d_tiny", "tv_r3d_18", "tv_r2plus1d_18", "tv_s3d")
    with pytest.raises(ValueError, match="valid names: c3d, r3d, r21d, s3d_g, r21d_tiny, tv_r3d_18"):
        build_backbone("r50")


def test_config_validation_accepts_exactly_the_names_models_builds() -> None:
    """One list: every name build_backbone takes (with and without +res) loads as a config, no other does."""
    from vpace.config import ConfigError, load_config

    for name in BACKBONES:
        for full in (name, f"{name}+res"):
            assert load_config(data={"model": {"backbone": full}}).model.backbone == full
    for wrong in ("r50", "r21d+rgb", "+res", "R21D"):
        with pytest.raises(ValueError, match="unknown backbone"):
            build_backbone(wrong)
        with pytest.raises(ConfigError, match=f"'model.backbone': unknown backbone '{re.escape(wrong)}'"):
            load_config(data={"model": {"backbone": wrong}})


# The sizes the pace paper (Tables 2-3) and VCOP / VCP / PRP report, counted with a 4-way linear head.
PAPER_SIZES = [("c3d", 27.7e6), ("r3d", 14.4e6), ("r21d", 14.4e6), ("s3d_g", 9.1e6)]


@pytest.mark.parametrize("name,target", PAPER_SIZES)
def test_paper_param_counts(name: str, target: float) -> None:
    count = with_4way_head(build_backbone(name))
    assert abs(count - target) / target < 0.02, f"{name}: {count:,} vs {target:,.0f}"


def test_c3d_count_matches_layer_formula() -> None:
    chans = [3, 64, 128, 256, 256, 512, 512, 512, 512]  # conv1 .. conv5b, 3x3x3 with bias, BN each
    expected = sum(ci * co * 27 + co + 2 * co for ci, co in zip(chans[:-1], chans[1:], strict=True))
    assert n_params(build_backbone("c3d")) == expected


def _tv_r3d_one_block() -> VideoResNet:
    return VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem, num_classes=4)


def _tv_to_vcop_key(key: str) -> str:
    """torchvision VideoResNet key -> VCOP R3DNet key (our naming)."""
    if key.startswith("stem."):
        return re.sub(r"^stem\.1\.", "bn1.", re.sub(r"^stem\.0\.", "conv1.temporal_spatial_conv.", key))
    m = re.match(r"^layer(\d)\.0\.(.*)$", key)
    assert m, key
    stage, rest = f"conv{int(m.group(1)) + 1}.block1.", m.group(2)
    rest = re.sub(r"^conv(\d)\.0\.", r"conv\1.temporal_spatial_conv.", rest)
    rest = re.sub(r"^conv(\d)\.1\.", r"bn\1.", rest)
    rest = re.sub(r"^downsample\.0\.", "downsampleconv.temporal_spatial_conv.", rest)
    rest = re.sub(r"^downsample\.1\.", "downsamplebn.", rest)
    return stage + rest


def test_r3d_equals_torchvision_one_block_resnet() -> None:
    """VCOP's R3D-18 is torchvision's VideoResNet with one BasicBlock per stage: same weights, same output."""
    ref, ours = _tv_r3d_one_block().eval(), build_backbone("r3d").eval()
    assert n_params(ours) + n_params(ref.fc) == n_params(ref)
    state = {_tv_to_vcop_key(k): v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(SMALL)
    with torch.no_grad():
        expected = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.stem(x)))))), 1)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-5)


def test_r21d_mid_channels_match_a_3d_conv() -> None:
    """(2+1)D convs sized like the 3D conv they replace (R(2+1)D paper Sec. 3.5), so R(2+1)D ~ R3D."""
    tv = tvv.r2plus1d_18()
    assert tv.layer2[0].conv1[0][0].out_channels == mid_channels(64, 128, (3, 3, 3))
    r21d = build_backbone("r21d")
    for m in r21d.modules():
        if isinstance(m, SpatioTemporalConv):
            co, _, kt = m.temporal_conv.weight.shape[:3]
            _, ci, _, kh, kw = m.spatial_conv.weight.shape
            conv3d = ci * co * kt * kh * kw
            assert abs(n_params(m) - conv3d) / conv3d < 0.05
    assert abs(n_params(r21d) - n_params(build_backbone("r3d"))) / n_params(r21d) < 0.005


def test_s3d_without_gating_equals_torchvision_s3d() -> None:
    """S3D-G minus gating is torchvision's s3d trunk: same count, same output with copied weights."""
    ref = tvv.s3d().eval()
    ours = build_backbone("s3d_g", gating=False).eval()
    assert n_params(ours) == n_params(ref.features)
    ref_state = ref.features.state_dict()
    our_state = ours.state_dict()
    assert [v.shape for v in ref_state.values()] == [v.shape for v in our_state.values()]
    ours.load_state_dict(dict(zip(our_state, ref_state.values(), strict=True)))
    for m in ours.modules():  # torchvision's s3d uses TF's BN epsilon
        if isinstance(m, nn.BatchNorm3d):
            m.eps = 1e-3
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.features(x).mean((2, 3, 4)), rtol=1e-4, atol=1e-5)
    gated = build_backbone("s3d_g")
    gates = [m for m in gated.modules() if type(m).__name__ == "SelfGating"]
    assert len(gates) == 1 + 4 * 9  # after conv_2c, then every branch of the nine Inception blocks
    assert n_params(gated) - n_params(ours) == sum(g.fc.in_features * (g.fc.in_features + 1) for g in gates)


@pytest.mark.parametrize("name,builder,head", [
    ("tv_r3d_18", tvv.r3d_18, "fc."),
    ("tv_r2plus1d_18", tvv.r2plus1d_18, "fc."),
    ("tv_s3d", tvv.s3d, "classifier."),
])
def test_torchvision_wrappers_are_torchvision_minus_head(name: str, builder, head: str) -> None:
    ref, ours = builder(), build_backbone(name)
    head_params = sum(p.numel() for k, p in ref.named_parameters() if k.startswith(head))
    assert n_params(ours) == n_params(ref) - head_params
    assert list(ours.state_dict()) == [k for k in ref.state_dict() if not k.startswith(head)]


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_backward_and_features(name: str) -> None:
    model = build_backbone(name)
    assert model.min_input[0] <= 8 and model.min_input[1] <= 32 and model.min_input[2] <= 32
    x = torch.randn(SMALL)
    feats = model.forward_features(x)
    assert set(feats) == {"p4", "p5", "conv5"}
    conv5 = feats["conv5"]
    assert conv5.dim() == 5 and conv5.shape[:2] == (2, model.feature_dim)
    assert feats["p5"].shape == (2, model.feature_dim)
    assert feats["p4"].dim() == 2 and feats["p4"].shape[0] == 2
    torch.testing.assert_close(feats["p5"], conv5.mean((2, 3, 4)))
    (feats["p5"].square().mean() + feats["p4"].square().mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x)["p5"])


@pytest.mark.parametrize("name", ["c3d", "r21d_tiny", "s3d_g", "tv_s3d"])
def test_odd_sizes(name: str) -> None:
    """Fixed-kernel pools (C3D, S3D) must not break on sizes that are not powers of two."""
    model = build_backbone(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 9, 33, 45)).shape == (1, model.feature_dim)


@pytest.mark.parametrize("name", BACKBONES)
def test_channels_last_and_bf16_autocast(name: str) -> None:
    model = build_backbone(name).eval()
    x = torch.randn(SMALL)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(bf).all()
    assert (bf.float() - ref).norm() / ref.norm() < 0.05


def test_bf16_autocast_training_step() -> None:
    model = build_backbone("r21d_tiny")
    x = torch.randn(4, 3, 16, 32, 32).to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = nn.Linear(model.feature_dim, 4)(model(x))
        loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", BACKBONES)
def test_too_small_or_malformed_input_is_a_clear_error(name: str) -> None:
    model = build_backbone(name)
    t, h, w = model.min_input
    with pytest.raises(ValueError, match=rf"at least T={t} frames and H x W = {h} x {w}"):
        model(torch.randn(1, 3, t - 1, h, w))
    with pytest.raises(ValueError, match=rf"at least T={t}"):
        model.forward_features(torch.randn(1, 3, t, h, w - 1))
    with pytest.raises(ValueError, match=r"expects input \[B, 3, T, H, W\]"):
        model(torch.randn(1, 8, 32, 32, 3))  # channels-last frames, the usual mistake


def test_weights_path_loads_torchvision_checkpoint(tmp_path) -> None:
    ref = tvv.s3d()
    path = tmp_path / "s3d.pth"
    torch.save(ref.state_dict(), path)  # a torchvision checkpoint, classifier included
    ours = build_backbone("tv_s3d", weights_path=path)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k])


def test_weights_path_loads_reference_repo_checkpoint(tmp_path) -> None:
    """A video-pace style checkpoint (DataParallel prefix, 4-way ``linear`` head) in safetensors."""
    from safetensors.torch import save_file

    src = build_backbone("r21d_tiny")
    state = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    state["module.linear.weight"], state["module.linear.bias"] = torch.zeros(4, 128), torch.zeros(4)
    save_file(state, str(tmp_path / "ckpt.safetensors"))
    loaded = build_backbone("r21d_tiny", weights_path=tmp_path / "ckpt.safetensors")
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, src.state_dict()[k])
    torch.save({"state_dict": {"conv1.foo": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing keys"):
        build_backbone("r21d_tiny", weights_path=tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_backbone("r21d_tiny", weights_path=tmp_path / "nope.pt")


def test_residual_input_suffix_feeds_frame_differences() -> None:
    """`<name>+res` is the same network (same state dict) fed x[t+1] - x[t] (last difference repeated)."""
    torch.manual_seed(0)
    rgb = build_backbone("r21d_tiny").eval()
    res = build_backbone("r21d_tiny+res").eval()
    res.load_state_dict(rgb.state_dict())  # same keys: RGB weights load into the residual variant
    assert res.residual_input and not rgb.residual_input
    x = torch.randn(2, 3, 16, 32, 32)
    d = x[:, :, 1:] - x[:, :, :-1]
    ref = torch.cat([d, d[:, :, -1:]], dim=2)  # independent of vpace.models.residual_frames
    with torch.no_grad():
        torch.testing.assert_close(res(x), rgb(ref))
        torch.testing.assert_close(res.forward_features(x)["p4"], rgb.forward_features(ref)["p4"])
        # a static clip has no motion: every residual frame is zero, whatever the appearance
        still = x[:, :, :1].expand(-1, -1, 16, -1, -1)
        torch.testing.assert_close(res(still), rgb(torch.zeros_like(x)))
    with pytest.raises(ValueError, match=r"unknown backbone 'nope\+res'"):
        build_backbone("nope+res")
