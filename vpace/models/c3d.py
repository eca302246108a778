"""C3D with BatchNorm, as in VCOP / VCP / PRP / pace (27.7M params with a 4-way head; no fc6/fc7).

Layer names follow the VCOP / video-pace ``C3D`` (``conv1``, ``bn1``, ``conv3a`` ...) so their checkpoints
load directly. The max pools use ``ceil_mode`` so odd or small clips (down to 8x16x16) still reach conv5;
at the usual 16x112x112 the shapes are identical to the reference's floor-mode pools.
"""

from __future__ import annotations

from torch import Tensor, nn

from .common import Backbone, init_weights

# (stage, conv names, out channels, pool after the stage): conv1 / conv2 are single, conv3-5 are pairs.
_STAGES: tuple[tuple[int, tuple[str, ...], int, tuple[int, int, int] | None], ...] = (
    (1, ("1",), 64, (1, 2, 2)),
    (2, ("2",), 128, (2, 2, 2)),
    (3, ("3a", "3b"), 256, (2, 2, 2)),
    (4, ("4a", "4b"), 512, (2, 2, 2)),
    (5, ("5a", "5b"), 512, None),  # pool5 is the global average pool of Backbone.forward
)


class C3D(Backbone):
    """Eight 3x3x3 conv+BN+ReLU layers in five stages; the pooled conv5b output is the feature."""

    min_input = (8, 16, 16)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self._names: list[list[str]] = []
        c_in = in_channels
        for stage, convs, c_out, pool in _STAGES:
            for name in convs:
                setattr(self, f"conv{name}", nn.Conv3d(c_in, c_out, 3, padding=1))
                setattr(self, f"bn{name}", nn.BatchNorm3d(c_out))
                c_in = c_out
            if pool is not None:
                setattr(self, f"pool{stage}", nn.MaxPool3d(pool, stride=pool, ceil_mode=True))
            self._names.append(list(convs))
        self.relu = nn.ReLU(inplace=True)
        self.feature_dim = c_in
        init_weights(self)

    def _stage(self, x: Tensor, stage: int) -> Tensor:
        for name in self._names[stage - 1]:
            x = self.relu(getattr(self, f"bn{name}")(getattr(self, f"conv{name}")(x)))
        pool = getattr(self, f"pool{stage}", None)
        return x if pool is None else pool(x)

    def _feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for stage in range(1, 5):
            x = self._stage(x, stage)
        return x, self._stage(x, 5)  # p4 = pooled pool4 output, as the retrieval protocol's "pool4"
