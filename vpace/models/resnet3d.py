"""R3D-18 and R(2+1)D with one block per stage (14.4M each) as in VCOP / VCP / PRP / pace, and a tiny R(2+1)D.

Both share the residual block and only differ in the conv: a full 3D conv (R3D) or a spatial 1xkxk conv into
``mid`` channels, BN, ReLU, then a temporal kx1x1 conv (R(2+1)D). ``mid`` is chosen as in the R(2+1)D paper
(Tran et al. 2018, Sec. 3.5) so each factored conv has the parameter count of the 3D conv it replaces, which
is why the two networks have the same size. Module names follow the VCOP / video-pace repos
(``conv2.block1.conv1.spatial_conv`` ...) so their checkpoints load directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn
from torch.nn.modules.utils import _triple

from .common import Backbone, init_weights

ConvKind = Literal["3d", "2+1d"]


def mid_channels(c_in: int, c_out: int, kernel: Sequence[int]) -> int:
    """R(2+1)D paper's M = floor(t*d^2*N_in*N_out / (d^2*N_in + t*N_out)): matches a txdxd conv's size."""
    t, h, w = kernel
    return (t * h * w * c_in * c_out) // (h * w * c_in + t * c_out)


class Conv3DSimple(nn.Module):
    """A plain 3D conv (no bias: BN follows); wrapped only to keep the VCOP key ``temporal_spatial_conv``."""

    def __init__(self, c_in: int, c_out: int, kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0) -> None:
        super().__init__()
        self.temporal_spatial_conv = nn.Conv3d(c_in, c_out, kernel, stride, padding, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal_spatial_conv(x)


class SpatioTemporalConv(nn.Module):
    """(2+1)D conv: 1xkxk spatial -> BN -> ReLU -> kx1x1 temporal; the extra ReLU is R(2+1)D's point."""

    def __init__(self, c_in: int, c_out: int, kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0) -> None:
        super().__init__()
        (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = _triple(kernel), _triple(stride), _triple(padding)
        mid = mid_channels(c_in, c_out, (kt, kh, kw))
        self.spatial_conv = nn.Conv3d(c_in, mid, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False)
        self.bn = nn.BatchNorm3d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.temporal_conv = nn.Conv3d(mid, c_out, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal_conv(self.relu(self.bn(self.spatial_conv(x))))


_CONVS: dict[str, type[nn.Module]] = {"3d": Conv3DSimple, "2+1d": SpatioTemporalConv}


class ResBlock(nn.Module):
    """Basic residual block (conv-BN-ReLU-conv-BN + shortcut); downsampling blocks stride 2 in t, h, w."""

    def __init__(self, conv: type[nn.Module], c_in: int, c_out: int, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        stride = 2 if downsample else 1
        if downsample:  # VCOP's shortcut: a strided 1x1x1 conv of the same kind, then BN
            self.downsampleconv = conv(c_in, c_out, 1, stride=2)
            self.downsamplebn = nn.BatchNorm3d(c_out)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        res = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.downsample:
            x = self.downsamplebn(self.downsampleconv(x))
        return self.relu(x + res)


class ResLayer(nn.Module):
    """One stage: ``block1`` (may downsample) then ``blocks`` (VCOP's names)."""

    def __init__(self, conv: type[nn.Module], c_in: int, c_out: int, num_blocks: int,
                 downsample: bool) -> None:
        super().__init__()
        self.block1 = ResBlock(conv, c_in, c_out, downsample)
        self.blocks = nn.ModuleList(ResBlock(conv, c_out, c_out) for _ in range(num_blocks - 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.block1(x)
        for block in self.blocks:
            x = block(x)
        return x


class ResNet3D(Backbone):
    """Stem + four residual stages (conv2..conv5); stages 3-5 halve t, h and w.

    ``widths`` / ``layers`` / ``stem_*`` exist for the tiny CPU variant; the defaults are the papers' nets.
    """

    def __init__(
        self,
        conv: ConvKind = "3d",
        widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (1, 1, 1, 1),
        stem_kernel: Sequence[int] = (3, 7, 7),
        stem_stride: Sequence[int] = (1, 2, 2),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if conv not in _CONVS:
            raise ValueError(f"conv must be one of {sorted(_CONVS)}; got {conv!r}")
        if len(widths) != 4 or len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"need 4 widths and 4 block counts >= 1; got widths={widths}, layers={layers}")
        make = _CONVS[conv]
        self.in_channels = in_channels
        self.conv1 = make(in_channels, widths[0], tuple(stem_kernel), stride=tuple(stem_stride),
                          padding=tuple(k // 2 for k in stem_kernel))
        self.bn1 = nn.BatchNorm3d(widths[0])
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = ResLayer(make, widths[0], widths[0], layers[0], downsample=False)
        self.conv3 = ResLayer(make, widths[0], widths[1], layers[1], downsample=True)
        self.conv4 = ResLayer(make, widths[1], widths[2], layers[2], downsample=True)
        self.conv5 = ResLayer(make, widths[2], widths[3], layers[3], downsample=True)
        self.feature_dim = widths[3]
        self.min_input = (8 * stem_stride[0], 8 * stem_stride[1], 8 * stem_stride[2])
        init_weights(self)

    def _feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        f4 = self.conv4(self.conv3(self.conv2(x)))
        return f4, self.conv5(f4)


def r3d(**kw) -> ResNet3D:
    """R3D-18 as in VCOP / pace: one 3x3x3 block per stage (the "R3D-18" of their tables, 14.4M)."""
    return ResNet3D("3d", **kw)


def r21d(**kw) -> ResNet3D:
    """R(2+1)D, one block per stage: the pace paper's "R(2+1)D 14.4M" (not torchvision's 31M r2plus1d_18)."""
    return ResNet3D("2+1d", **kw)


def r21d_tiny(**kw) -> ResNet3D:
    """Narrow R(2+1)D (16-32-64-128, 0.9M params) that trains on a 2-core CPU.

    The VCOP 3x7x7 stem but with spatial stride 4 (a ResNet stem's conv + max pool): stage 1 at full stem
    resolution costs 4x the FLOPs and dominates at 16 channels. Pass ``stem_stride=(1, 2, 2)`` for finer conv5
    maps (attention on 32x32 clips) at ~4x the cost.
    """
    kw.setdefault("widths", (16, 32, 64, 128))
    kw.setdefault("stem_stride", (1, 4, 4))
    return ResNet3D("2+1d", **kw)
