"""Ray Train V2 training: one elastic, fault-tolerant per-worker loop for any `TrainSpec`.

Public entry points (used by `vpace.cli`): `pretrain(cfg, address=None)` and `export_backbone(run, out)`.
Fine-tuning builds its own `TrainSpec` and calls `run_task(spec, cfg, address)`.
"""

from vpace.train.checkpoint import find_latest, load_state
from vpace.train.export import export_backbone
from vpace.train.launch import TrainResult, build_trainer, pretrain, run_task
from vpace.train.spec import TrainSpec

__all__ = ["TrainResult", "TrainSpec", "build_trainer", "export_backbone", "find_latest", "load_state",
           "pretrain", "run_task"]
