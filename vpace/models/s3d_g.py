"""S3D-G (Xie et al. 2018): separable Inception-3D with self-gating, the pace paper's S3D-G backbone.

Parameter count: torchvision's ``s3d`` without its 400-way classifier is 7,910,048; self-gating adds a
C->C linear (with bias) on each Inception branch and after conv_2c (1,225,008), giving 9,135,056 and
9,139,156 with a 4-way head: the literature's "9.1M". The "9.6M" of the pace paper's Table 3 (copied from
SpeedNet) is not reproduced by any head-free variant; with a 400-way Kinetics head S3D-G is 9.55M, the
closest reading. ``gating=False`` gives plain S3D with exactly torchvision's backbone size.

Module names follow the S3D-G of the video-pace / HowTo100M repos (``mixed_3b.conv_b1_b.conv1`` ...);
``separable_stem=False`` reproduces their non-separable 3x7x7 first conv. The default is the paper's (and
torchvision's) separable stem. Pool paddings follow torchvision (symmetric instead of TF "SAME").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _triple

from .common import Backbone, init_weights

# Inception (branch 0 1x1, branch 1 1x1 -> 3x3x3 sep, branch 2 1x1 -> 3x3x3 sep, branch 3 pool -> 1x1).
_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "3b": (64, 96, 128, 16, 32, 32),
    "3c": (128, 128, 192, 32, 96, 64),
    "4b": (192, 96, 208, 16, 48, 64),
    "4c": (160, 112, 224, 24, 64, 64),
    "4d": (128, 128, 256, 24, 64, 64),
    "4e": (112, 144, 288, 32, 64, 64),
    "4f": (256, 160, 320, 32, 128, 128),
    "5b": (256, 160, 320, 32, 128, 128),
    "5c": (384, 192, 384, 48, 128, 128),
}


class STConv3D(nn.Module):
    """Conv-BN-ReLU; ``separable`` splits a txkxk conv into 1xkxk then tx1x1, each with BN-ReLU (S3D)."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int, int], stride: int = 1,
                 padding: int = 0, separable: bool = False) -> None:
        super().__init__()
        (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = _triple(kernel), _triple(stride), _triple(padding)
        self.separable = separable and kt > 1
        if self.separable:
            self.conv1 = nn.Conv3d(c_in, c_out, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False)
            self.bn1 = nn.BatchNorm3d(c_out)
            self.conv2 = nn.Conv3d(c_out, c_out, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False)
            self.bn2 = nn.BatchNorm3d(c_out)
        else:
            self.conv1 = nn.Conv3d(c_in, c_out, (kt, kh, kw), (st, sh, sw), (pt, ph, pw), bias=False)
            self.bn1 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x))) if self.separable else x


class SelfGating(nn.Module):
    """x * sigmoid(W mean(x) + b): a cheap channel-wise context gate, the "G" of S3D-G."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.fc(x.mean(dim=(2, 3, 4)))
        return x * weights.sigmoid()[:, :, None, None, None]


class InceptionBlock(nn.Module):
    """Four-branch separable Inception block; each branch is gated before the concat when ``gating``."""

    def __init__(self, c_in: int, b0: int, b1a: int, b1b: int, b2a: int, b2b: int, b3: int,
                 gating: bool = True) -> None:
        super().__init__()
        self.conv_b0 = STConv3D(c_in, b0, 1)
        self.conv_b1_a = STConv3D(c_in, b1a, 1)
        self.conv_b1_b = STConv3D(b1a, b1b, 3, padding=1, separable=True)
        self.conv_b2_a = STConv3D(c_in, b2a, 1)
        self.conv_b2_b = STConv3D(b2a, b2b, 3, padding=1, separable=True)
        self.maxpool_b3 = nn.MaxPool3d(3, stride=1, padding=1)
        self.conv_b3_b = STConv3D(c_in, b3, 1)
        self.gating = gating
        if gating:
            self.gating_b0, self.gating_b1 = SelfGating(b0), SelfGating(b1b)
            self.gating_b2, self.gating_b3 = SelfGating(b2b), SelfGating(b3)
        self.output_dim = b0 + b1b + b2b + b3

    def forward(self, x: Tensor) -> Tensor:
        branches = [
            self.conv_b0(x),
            self.conv_b1_b(self.conv_b1_a(x)),
            self.conv_b2_b(self.conv_b2_a(x)),
            self.conv_b3_b(self.maxpool_b3(x)),
        ]
        if self.gating:
            gates = (self.gating_b0, self.gating_b1, self.gating_b2, self.gating_b3)
            branches = [g(b) for g, b in zip(gates, branches, strict=True)]
        return torch.cat(branches, dim=1)


class S3DG(Backbone):
    """S3D-G trunk up to mixed_5c; p4 pools mixed_4f, p5 / the feature pools mixed_5c (1024-d)."""

    min_input = (8, 32, 32)

    def __init__(self, gating: bool = True, separable_stem: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.use_gating = gating
        self.conv1 = STConv3D(in_channels, 64, (7, 7, 7) if separable_stem else (3, 7, 7), stride=2,
                              padding=3 if separable_stem else (1, 3, 3), separable=separable_stem)
        self.maxpool_2a = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.conv_2b = STConv3D(64, 64, 1)
        self.conv_2c = STConv3D(64, 192, 3, padding=1, separable=True)
        if gating:
            self.gating = SelfGating(192)
        self.maxpool_3a = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.maxpool_4a = nn.MaxPool3d(3, stride=2, padding=1)
        self.maxpool_5a = nn.MaxPool3d(2, stride=2, ceil_mode=True)
        c = 192
        for name, widths in _MIXED.items():
            block = InceptionBlock(c, *widths, gating=gating)
            setattr(self, f"mixed_{name}", block)
            c = block.output_dim
        self.feature_dim = c
        init_weights(self)

    def _mixed(self, x: Tensor, names: str) -> Tensor:
        for name in names.split():
            x = getattr(self, f"mixed_{name}")(x)
        return x

    def _feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv_2c(self.conv_2b(self.maxpool_2a(self.conv1(x))))
        if self.use_gating:
            x = self.gating(x)
        x = self._mixed(self.maxpool_3a(x), "3b 3c")
        f4 = self._mixed(self.maxpool_4a(x), "4b 4c 4d 4e 4f")
        return f4, self._mixed(self.maxpool_5a(f4), "5b 5c")
