"""Heads and pretext objectives behind one interface (`Objective`), selected by `Config.method`.

See `vpace.objectives.base` for the batch contract and the train-loop protocol.
"""

from __future__ import annotations

from torch import nn

from vpace.config import Config, parse_fraction_list
from vpace.objectives.base import Objective, unwrap
from vpace.objectives.heads import PaceModel, TwoHeadEncoder, make_projection
from vpace.objectives.pace import PaceObjective, pace_objective
from vpace.objectives.queue import KeyQueue, all_gather_rows
from vpace.objectives.rspnet import RSPNet, RSPNetObjective, rspnet_objective

__all__ = [
    "KeyQueue", "Objective", "PaceModel", "PaceObjective", "RSPNet", "RSPNetObjective", "TwoHeadEncoder",
    "all_gather_rows", "build_objective", "make_projection", "pace_objective", "rspnet_objective", "unwrap",
]


def build_objective(cfg: Config, backbone: nn.Module) -> Objective:
    """The objective of `cfg.method` around `backbone` (which it shares, not copies)."""
    if cfg.method in ("pace", "pace_ctr"):
        num_paces = len(parse_fraction_list(cfg.pace.paces, "pace.paces"))
        return PaceObjective(backbone, cfg.pace, num_paces=num_paces, method=cfg.method,
                             clips_per_video=cfg.data.clips_per_video)
    if cfg.method == "rspnet":
        return RSPNetObjective(backbone, cfg.rspnet)
    raise ValueError(f"config field 'method': unknown method {cfg.method!r}")
