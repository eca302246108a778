"""The hook between the shared training loop and what is trained.

The loop (`vpace.train.loop`) owns everything that is the same for pre-training and fine-tuning: DDP via
`prepare_model`, the elastic sampler, DataLoader, optimizer + lr schedule, AMP, checkpoints, resume, fault
injection, progress. A `Task` owns what differs: the model, the data set and what one step computes.
Pre-training is `PretrainTask`; `vpace finetune` (issue 7) adds a task with a backbone + new fc, a labeled
clip data set and a cross-entropy step, and gets checkpoints, elasticity and fault tolerance for free.

A task instance is pickled to every Ray worker, so keep its constructor arguments small; build heavy things in
`setup` (runs on the worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vpace.config import Config


class Task:
    """Interface the loop drives. Subclasses implement `setup`, `dataset`, `step` (and usually `collate`)."""

    name = "task"

    def check(self, cfg: Config) -> None:
        """Driver-side checks that need files (data index, weights) so a bad run fails before Ray starts."""

    def setup(self, cfg: Config, device: torch.device) -> nn.Module:
        """Build the model on `device` and remember it; return the module whose params are trained."""
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> None:
        """Receive the DDP wrapper of `setup`'s module (the same module object stays inside)."""

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer gets (never a momentum encoder)."""
        raise NotImplementedError

    def dataset(self, cfg: Config) -> Dataset:
        """Item-indexed data set; `set_epoch(epoch)` is called on it if present."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def batch_size(self, batch: dict[str, Any]) -> tuple[int, int]:
        """(videos, clips) in a collated batch; 0 videos = every video of it was broken."""
        raise NotImplementedError

    def step(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Forward + loss of one (device-resident) batch; `generator` seeds augmentation reproducibly."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called on every worker once per optimizer step (may all-gather)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Everything with state (model + momentum encoder + queue ...)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def backbone(self) -> nn.Module:
        """The backbone inside `state_dict`'s module tree, for export."""
        raise NotImplementedError

    def state_root(self) -> nn.Module:
        """The module whose state_dict is `state_dict()` (to locate the backbone's key prefix)."""
        raise NotImplementedError

    def ddp_kwargs(self) -> dict[str, Any]:
        return {}

    def epoch_metrics(self, epochs_done: int, final: bool) -> dict[str, float]:
        """Rank 0 only, at each epoch end and at the last step (`final`): extra metrics (e.g. `vpace.tune`'s
        retrieval proxy) reported with that checkpoint and kept in the epoch's history row. Must not use
        collectives: the other ranks are waiting in `ray.train.report`."""
        return {}


def resolve_paths(cfg: Config) -> Config:
    """Absolute data/storage/weights paths: Ray Train workers run in their own working directory."""
    import copy

    cfg = copy.deepcopy(cfg)

    def fix(p: str | None) -> str | None:
        if p is None or "://" in p:
            return p
        return str(Path(p).expanduser().resolve())

    cfg.data.index = fix(cfg.data.index)  # type: ignore[assignment]
    cfg.data.cache_dir = fix(cfg.data.cache_dir)
    cfg.model.weights = fix(cfg.model.weights)
    cfg.run.storage = fix(cfg.run.storage)  # type: ignore[assignment]
    return cfg
