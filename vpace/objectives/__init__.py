"""Pretext methods as a model (an `nn.Module` returning outputs) plus a loss outside it, by `Config.method`.

See `vpace.objectives.base` for the batch contract and the train-loop protocol.
"""

from __future__ import annotations

from torch import nn

from vpace.config import Config, parse_pace_set
from vpace.objectives.base import TALLY_GROUPS, LossFn, Metric, Metrics, metric_values, pace_tallies, per_step
from vpace.objectives.heads import PaceModel
from vpace.objectives.pace import PaceLoss, build_pace, pace_objective
from vpace.objectives.queue import KeyQueue
from vpace.objectives.rspnet import RSPNet, RSPNetLoss, build_rspnet, rspnet_objective

__all__ = ["TALLY_GROUPS", "KeyQueue", "LossFn", "Metric", "Metrics", "PaceModel", "RSPNet", "build_loss",
           "build_objective", "build_pace", "build_rspnet", "metric_values", "pace_objective", "pace_tallies",
           "per_step", "rspnet_objective"]


def build_objective(cfg: Config, backbone: nn.Module) -> tuple[nn.Module, LossFn]:
    """`(model, loss)` of `cfg.method` around `backbone` (shared, not copied). The model holds all state
    (for `.to`, `state_dict`, DDP) and has `backbone`; the loss is a small stateless object."""
    if cfg.method in ("pace", "pace_ctr"):
        num_paces = len(parse_pace_set(cfg.pace.paces))
        return build_pace(backbone, cfg.pace, num_paces=num_paces, method=cfg.method,
                          clips_per_video=cfg.data.clips_per_video)
    if cfg.method == "rspnet":
        return build_rspnet(backbone, cfg.rspnet, batch_size=cfg.optim.batch_size)
    raise ValueError(f"config field 'method': unknown method {cfg.method!r}")


def build_loss(cfg: Config) -> LossFn:
    """The loss of `cfg.method` alone (what `build_objective` pairs with the model): cheap, no state."""
    if cfg.method in ("pace", "pace_ctr"):
        return PaceLoss(cfg.pace, cfg.data.clips_per_video, cfg.method)
    if cfg.method == "rspnet":
        return RSPNetLoss(cfg.rspnet)
    raise ValueError(f"config field 'method': unknown method {cfg.method!r}")
