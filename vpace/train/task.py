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
from vpace.train.progress import is_uri


class Task:
    """Interface the loop drives. Subclasses implement `setup`, `dataset`, `step` (and usually `collate`)."""

    name = "task"

    def check(self, cfg: Config) -> None:
        """Driver-side checks that need files (data index, weights) so a bad run fails before Ray starts."""

    def setup(self, cfg: Config, device: torch.device) -> nn.Module:
        """Build the model on `device` and remember it; return the module whose params are trained."""
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> None:
        """Receive the DDP wrapper of `setup`'s module (the same module object stays inside) as `self.model`,
        what `step` calls."""
        self.model = model

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer gets: the trainable parameters of `state_root` (never a momentum encoder)."""
        return [p for p in self.state_root().parameters() if p.requires_grad]

    def dataset(self, cfg: Config) -> Dataset:
        """Item-indexed data set; `set_epoch(epoch)` is called on it if present."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def batch_size(self, batch: dict[str, Any]) -> tuple[int, int]:
        """(videos, clips) in a collated batch; 0 videos = every video of it was broken."""
        raise NotImplementedError

    def step(self, batch: dict[str, Any], generator: torch.Generator
             ) -> tuple[Tensor, dict[str, float | Tensor]]:
        """Forward + loss of one (device-resident) batch; `generator` seeds augmentation reproducibly.

        Metrics: a float is a per-step value the loop averages over steps; a Tensor ``[hits, total]`` (on the
        device, no sync) is a ratio the loop sums over steps and workers before dividing (e.g. per-pace
        accuracy, `vpace.objectives.pace_tallies`)."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called on every worker once per optimizer step (may all-gather)."""

    def state_root(self) -> nn.Module:
        """The module holding everything with state (model + momentum encoder + queue ...): the checkpoint
        is its state dict."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        return self.state_root().state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.state_root().load_state_dict(state)

    def backbone(self) -> nn.Module:
        """The backbone inside `state_root`'s module tree, for export (its key prefix is recorded)."""
        return self.state_root().backbone

    def ddp_kwargs(self) -> dict[str, Any]:
        return {}

    def epoch_metrics(self, epochs_done: int, final: bool) -> dict[str, float]:
        """Rank 0 only, at each epoch end and at the last step (`final`): extra metrics (e.g. `vpace.tune`'s
        retrieval proxy) reported with that checkpoint and kept in the epoch's history row. Must not use
        collectives: the other ranks are waiting in `ray.train.report`."""
        return {}


def resolve_paths(cfg: Config) -> Config:
    """A copy with absolute data/storage/weights/proxy paths (URIs as they are): Ray Train workers and Tune
    trials run in their own working directory."""
    import copy

    cfg = copy.deepcopy(cfg)

    def fix(p: str | None) -> str | None:
        return p if p is None or is_uri(p) else str(Path(p).expanduser().resolve())

    cfg.data.index = fix(cfg.data.index)  # type: ignore[assignment]
    cfg.data.cache_dir = fix(cfg.data.cache_dir)
    cfg.model.weights = fix(cfg.model.weights)
    cfg.run.storage = fix(cfg.run.storage)  # type: ignore[assignment]
    cfg.proxy.index = fix(cfg.proxy.index)
    return cfg
