"""The backbone registry: every name `vpace.models.build_backbone` accepts and where it is built, as data.

Config validation must reject an unknown ``model.backbone`` before Ray starts without importing torch-heavy
model code, so the registry names the module under ``vpace.models``, the constructor and its leading
arguments; `vpace.models` resolves them on first use.
"""

from __future__ import annotations

# name -> (module of vpace.models, constructor in it, positional arguments it is called with first)
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "c3d": ("c3d", "C3D", ()),
    "r3d": ("resnet3d", "r3d", ()),
    "r21d": ("resnet3d", "r21d", ()),
    "s3d_g": ("s3d_g", "S3DG", ()),
    "r21d_tiny": ("resnet3d", "r21d_tiny", ()),
    # torchvision video models, wrapped (`tv_` names load torchvision's own checkpoints)
    "tv_r3d_18": ("torchvision_wrappers", "TorchvisionBackbone", ("r3d_18",)),
    "tv_r2plus1d_18": ("torchvision_wrappers", "TorchvisionBackbone", ("r2plus1d_18",)),
    "tv_s3d": ("torchvision_wrappers", "TorchvisionBackbone", ("s3d",)),
}
BACKBONES: tuple[str, ...] = tuple(REGISTRY)
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
