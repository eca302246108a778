"""torchvision's ``r3d_18``, ``r2plus1d_18`` and ``s3d`` behind the backbone contract.

Always built with ``weights=None`` (nothing is downloadable here): random init, or ``weights_path`` to a local
torchvision checkpoint (the classifier keys are dropped). The trunk modules keep torchvision's names, so the
state dict equals torchvision's minus its classifier. torchvision's fixed ``AvgPool3d((2, 7, 7))`` of s3d is
replaced by the adaptive pool of :class:`Backbone`, so small clips work.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn
from torchvision.models import video as tvv

from .common import Backbone, load_weights

# name -> (builder, trunk attributes in order, index of the second-last stage's last module, head prefix)
_ARCHS = {
    "r3d_18": (tvv.r3d_18, ("stem", "layer1", "layer2", "layer3", "layer4"), 3, "fc."),
    "r2plus1d_18": (tvv.r2plus1d_18, ("stem", "layer1", "layer2", "layer3", "layer4"), 3, "fc."),
    "s3d": (tvv.s3d, ("features",), 12, "classifier."),  # features[12] = Mixed_4f
}


class TorchvisionBackbone(Backbone):
    """Trunk of a torchvision video model; p4 / p5 pool the last two stages (layer3 / Mixed_4f, last)."""

    min_input = (8, 32, 32)

    def __init__(self, arch: str, weights_path: str | Path | None = None) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"unknown torchvision arch {arch!r}; valid: {sorted(_ARCHS)}")
        builder, trunk, self._p4_index, head = _ARCHS[arch]
        model = builder(weights=None)
        if weights_path is not None:  # into the full model, so torchvision's own checkpoints load as-is
            load_weights(model, weights_path, drop_prefixes=(head,))
        for name in trunk:
            setattr(self, name, getattr(model, name))
        self._trunk = trunk
        self.arch = arch
        self.feature_dim = model.fc.in_features if hasattr(model, "fc") else model.classifier[1].in_channels
        if arch != "s3d":  # video ResNets: stride (1,2,2) stem + three stride-2 stages
            self.min_input = (8, 16, 16)

    def _feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        layers: list[nn.Module] = [m for name in self._trunk for m in self._children_of(name)]
        for layer in layers[: self._p4_index + 1]:
            x = layer(x)
        f4 = x
        for layer in layers[self._p4_index + 1:]:
            x = layer(x)
        return f4, x

    def _children_of(self, name: str) -> list[nn.Module]:
        """s3d's trunk is one Sequential whose items are the stages; a resnet's attributes are the stages."""
        module = getattr(self, name)
        return list(module) if name == "features" else [module]
