"""Video backbones behind one contract (docs/ARCHITECTURE.md, "Models").

``build_backbone(name, **kw)`` returns a :class:`~vpace.models.common.Backbone`: ``.feature_dim``,
``forward(x [B, 3, T, H, W]) -> [B, feature_dim]`` and ``forward_features(x) -> {"p4", "p5", "conv5"}``.
Heads live outside (see vpace.objectives).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

from vpace.config import BACKBONES, REGISTRY, base_backbone, unknown_backbone

from .common import Backbone, load_weights, residual_frames


def _constructor(base: str) -> Callable[..., Backbone]:
    """The constructor of a registered name (`vpace.config.REGISTRY`), its module imported now."""
    module, attr, args = REGISTRY[base]
    return partial(getattr(importlib.import_module(f"{__name__}.{module}"), attr), *args)


def build_backbone(name: str, weights_path: str | Path | None = None, **kw) -> Backbone:
    """Build backbone ``name``; ``weights_path`` loads a local state dict (never downloads).

    Extra keywords go to the family's constructor (e.g. ``widths=`` for ``r21d_tiny``, ``gating=`` for
    ``s3d_g``). For our own families the reference repos' head keys (``linear.``/``fc.``) are dropped, so
    VCOP / video-pace checkpoints load; torchvision wrappers take torchvision's own checkpoints.
    A ``+res`` suffix (``r21d_tiny+res``) feeds the backbone residual frames (``residual_frames``): the same
    parameters, so RGB weights load into it and the name alone (kept in checkpoints) rebuilds it.
    """
    if (problem := unknown_backbone(name)) is not None:
        raise ValueError(problem)
    base = base_backbone(name)
    if base.startswith("tv_"):
        model = _constructor(base)(weights_path=weights_path, **kw)
    else:
        model = _constructor(base)(**kw)
        if weights_path is not None:
            load_weights(model, weights_path, drop_prefixes=model.head_prefixes)
    model.residual_input = name != base
    return model


__all__ = ["BACKBONES", "Backbone", "build_backbone", "residual_frames"]
