"""The backbone names `vpace.models.build_backbone` accepts, in a module that imports nothing.

Why a module of its own: config validation must reject an unknown ``model.backbone`` before Ray starts, but
config sits below models (docs/ARCHITECTURE.md, "Layers") and must not import torch-heavy model code. Both
import the names from here, and `vpace.models` refuses to load if its constructors and this list differ.
"""

from __future__ import annotations

BACKBONES: tuple[str, ...] = (
    "c3d", "r3d", "r21d", "s3d_g", "r21d_tiny",  # vpace.models families
    "tv_r3d_18", "tv_r2plus1d_18", "tv_s3d",  # torchvision video models, wrapped
)
RESIDUAL_SUFFIX = "+res"  # `r21d_tiny+res`: that network fed residual frames (vpace.models.residual_frames)


def base_backbone(name: str) -> str:
    """The network a backbone name builds: the name without the residual-input suffix (same parameters)."""
    return name.removesuffix(RESIDUAL_SUFFIX)


def unknown_backbone(name: str) -> str | None:
    """Why ``name`` is not a backbone (the message lists the valid names), or None when it is one."""
    if base_backbone(name) in BACKBONES:
        return None
    return (f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)} "
            f"(each also with {RESIDUAL_SUFFIX!r} for residual-frame input)")
