"""Shared pieces of every backbone: the input check, the pooled-feature contract, init and weight loading.

Every backbone subclasses :class:`Backbone` and only implements ``_feature_maps`` (the last two stages'
maps); pooling, the size check and ``forward_features`` live here so the families cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def residual_frames(x: Tensor) -> Tensor:
    """[B, C, T, H, W] -> x[t+1] - x[t], the last difference repeated so T (and every stride) is unchanged.

    Residual frames (Tao et al., "Rethinking motion representation: residual frames with 3D ConvNets", 2020)
    remove the static appearance a small 3D CNN otherwise spends its first thousands of steps filtering out:
    on the synthetic set a tiny R(2+1)D learns pace from them within minutes and sits at chance on RGB.
    """
    if x.shape[2] < 2:
        raise ValueError(f"residual frames need at least 2 frames; got T={x.shape[2]}")
    d = x[:, :, 1:] - x[:, :, :-1]
    return torch.cat([d, d[:, :, -1:]], dim=2)


def global_avg_pool(x: Tensor) -> Tensor:
    """[B, C, t, h, w] -> [B, C]; adaptive, so any map size (and channels_last_3d) works."""
    return torch.flatten(F.adaptive_avg_pool3d(x, 1), 1)


class Backbone(nn.Module):
    """Base class: pooled features out, heads live outside (moco style).

    Subclasses set ``feature_dim`` (channels of the last stage), ``min_input`` (the smallest (T, H, W):
    the network's total stride per axis, below which the last stage would see mostly padding) and
    implement ``_feature_maps``.
    """

    feature_dim: int
    min_input: tuple[int, int, int]
    in_channels: int = 3
    # Feed residual frames (set by ``build_backbone("<name>+res")``); no parameters, so state dicts are equal.
    residual_input: bool = False
    # Keys of classifier heads in checkpoints of the reference repos; dropped when loading weights.
    head_prefixes: tuple[str, ...] = ("linear.", "fc.")

    def _feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (second-last stage map, last stage map), both [B, C, t, h, w]."""
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """Fail loudly on a wrong layout or a clip too small for the network's strides."""
        name = type(self).__name__
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name} expects input [B, {self.in_channels}, T, H, W]; got shape {tuple(x.shape)}"
            )
        t, h, w = x.shape[2:]
        mt, mh, mw = self.min_input
        if t < mt or h < mh or w < mw:
            raise ValueError(
                f"{name} needs clips of at least T={mt} frames and H x W = {mh} x {mw} pixels "
                f"(its total stride); got T={t}, H={h}, W={w}"
            )

    def _input(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return residual_frames(x) if self.residual_input else x

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, T, H, W] -> [B, feature_dim]: global average pool of the last stage."""
        return global_avg_pool(self._feature_maps(self._input(x))[1])

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """p4 / p5: pooled vectors of the last two stages (retrieval); conv5: last map (attention)."""
        f4, f5 = self._feature_maps(self._input(x))
        return {"p4": global_avg_pool(f4), "p5": global_avg_pool(f5), "conv5": f5}


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit BN, small linears: the torchvision video-ResNet / VCOP recipe."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a local state dict (``.safetensors`` or a torch file, loaded with ``weights_only=True``).

    Never downloads. Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and a DataParallel ``module.``
    prefix, the two wrappings the reference repos' checkpoints come in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(module: nn.Module, path: str | Path, drop_prefixes: Iterable[str] = ()) -> None:
    """Load ``path`` strictly except for head keys (dropped from the file, left as-is in ``module``).

    The error names the keys that did not match, since a wrong-architecture file is the usual mistake.
    """
    drop = tuple(drop_prefixes)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(drop)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(drop)]  # a head absent from the file is fine
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not match {type(module).__name__}: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
