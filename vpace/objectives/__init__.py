"""Pretext methods as a model (an `nn.Module` returning outputs) plus a loss outside it, by `Config.method`.

See `vpace.objectives.base` for the batch contract and the train-loop protocol.
"""

from __future__ import annotations

from torch import nn

from vpace.config import Config, parse_fraction_list
from vpace.objectives.base import TALLY_GROUPS, LossFn, pace_tallies
from vpace.objectives.heads import PaceModel
from vpace.objectives.pace import build_pace, pace_objective
from vpace.objectives.queue import KeyQueue
from vpace.objectives.rspnet import RSPNet, build_rspnet, rspnet_objective

__all__ = ["TALLY_GROUPS", "KeyQueue", "LossFn", "PaceModel", "RSPNet", "build_objective", "build_pace",
           "build_rspnet", "pace_objective", "pace_tallies", "rspnet_objective"]


def build_objective(cfg: Config, backbone: nn.Module) -> tuple[nn.Module, LossFn]:
    """`(model, loss)` of `cfg.method` around `backbone` (shared, not copied). The model holds all state
    (for `.to`, `state_dict`, DDP) and has `backbone` and `after_optimizer_step()`."""
    if cfg.method in ("pace", "pace_ctr"):
        num_paces = len(parse_fraction_list(cfg.pace.paces, "pace.paces"))
        return build_pace(backbone, cfg.pace, num_paces=num_paces, method=cfg.method,
                          clips_per_video=cfg.data.clips_per_video)
    if cfg.method == "rspnet":
        return build_rspnet(backbone, cfg.rspnet)
    raise ValueError(f"config field 'method': unknown method {cfg.method!r}")
