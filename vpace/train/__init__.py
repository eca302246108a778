"""Ray Train V2 pre-training: one elastic, fault-tolerant per-worker loop shared by every `Task`.

Public entry points (used by `vpace.cli`): `pretrain(cfg, address=None)` and `export_backbone(run, out)`.
Fine-tuning plugs in with its own `Task` subclass and `run_task(task, cfg, address)`.
"""

from vpace.train.checkpoint import export_backbone, find_latest, load_state
from vpace.train.launch import TrainResult, build_trainer, pretrain, run_task
from vpace.train.task import Task

__all__ = ["Task", "TrainResult", "build_trainer", "export_backbone", "find_latest", "load_state", "pretrain",
           "run_task"]
