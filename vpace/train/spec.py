"""What a run trains: a small record that pre-training and fine-tuning each build (`TrainSpec`).

The loop (`vpace.train.loop`) owns everything else: devices, DDP, the optimizer over the model's trainable
parameters, the state dict, checkpoints, resume and data loading. A spec is pickled to every Ray worker, so
its fields are module-level functions (or `functools.partial` of them) that take the run's `Config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vpace.config import Config
from vpace.data import collate_clips
from vpace.objectives import Metrics

Batch = dict[str, Any]


def _nothing(cfg: Config) -> None:
    return None


@dataclass(frozen=True)
class TrainSpec:
    """`build_model(cfg)`: the module holding all state (its `.backbone` is what export takes; parameters
    with `requires_grad` are trained). `dataset(cfg)`: item-indexed clips. `forward_loss(model, batch,
    generator, cfg)`: forward + loss of one device-resident batch (`generator` seeds augmentation), returning
    `(loss, metrics)` with `(sum, count)` metrics. `check(cfg)`: driver-side checks that read files, run
    before Ray starts. `epoch_metrics(backbone, cfg, epochs_done, final)`: rank 0 only, at epoch ends and the
    last step, extra values reported with that checkpoint (it must not use collectives)."""

    name: str  # the checkpoint's `task`
    build_model: Callable[[Config], nn.Module]
    dataset: Callable[[Config], Dataset]
    forward_loss: Callable[[nn.Module, Batch, torch.Generator, Config], tuple[Tensor, Metrics]]
    collate: Callable[[list[Any]], Batch] = collate_clips
    check: Callable[[Config], None] = _nothing
    epoch_metrics: Callable[[nn.Module, Config, int, bool], dict[str, float]] | None = None
