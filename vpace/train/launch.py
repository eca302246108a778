"""Driver side: validate, start (or join) Ray, run a `TorchTrainer` over a `Task`, collect the result.

Resume is by run name: Ray Train V2 restores `<run.storage>/<run.name>` when it exists, so re-running the same
command after a crash continues from its latest checkpoint (and a finished run returns at once).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vpace.config import Config, ConfigError, validate
from vpace.train.checkpoint import META_FILE
from vpace.train.loop import HISTORY_FILE, run_dir_of, train_loop_per_worker
from vpace.train.progress import is_remote, write_run_outputs
from vpace.train.task import Task, resolve_paths


@dataclass
class TrainResult:
    """What a finished run leaves: where it lives, its last checkpoint, the metrics reported with it."""

    run_dir: str
    checkpoint: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __str__(self) -> str:
        m = self.metrics
        accs = sorted(k for k in m if k.endswith("acc"))
        keys = [k for k in ("step", "epoch", "loss", *accs, "world_size", "skipped_total") if k in m]
        shown = ", ".join(f"{k}={m[k]:.4g}" if isinstance(m[k], float) else f"{k}={m[k]}" for k in keys)
        return f"run {self.run_dir}\n  last checkpoint {self.checkpoint}\n  {shown}"


# Train V2's PlacementGroupCleaner polls the dashboard's state API; an embedded Ray runs without a dashboard
# (2-core machines), so the cleaner would log a "Failed to query" warning every second of every run.
_PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_placement_group_cleaner() -> None:
    """Worker setup hook: silence only that logger's warnings (errors still show)."""
    logging.getLogger(_PG_CLEANER_LOGGER).setLevel(logging.ERROR)


def init_local_ray() -> None:
    """An embedded Ray on this machine's CPUs, without the dashboard (and without its cleaner noise)."""
    import ray

    ray.init(include_dashboard=False,
             runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_placement_group_cleaner"})


def _start_ray(address: str | None, cfg: Config) -> bool:
    """Join `address` (or $RAY_ADDRESS, as inside `ray job submit`), else start an embedded local Ray on all
    CPUs of this machine. Returns True if this call connected (so the caller disconnects at the end)."""
    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)  # a cluster may autoscale: no resource check here
        return True
    init_local_ray()
    res, s = ray.cluster_resources(), cfg.scale
    problem = None
    if res.get("CPU", 0) < s.min_workers * s.cpus_per_worker:
        problem = ConfigError("scale.min_workers", f"{s.min_workers} workers x {s.cpus_per_worker} CPUs do "
                              f"not fit this machine's {res.get('CPU', 0):g} CPUs (or pass --address)")
    elif s.use_gpu and res.get("GPU", 0) < s.min_workers:
        problem = ConfigError("scale.use_gpu", f"{s.min_workers} workers need as many GPUs; this machine has "
                              f"{res.get('GPU', 0):g} (set scale.use_gpu=false or pass --address)")
    if problem is not None:
        ray.shutdown()
        raise problem
    return True


def build_trainer(task: Task, cfg: Config, *, resize_interval_s: float | None = None,
                  callbacks: Sequence[Any] = ()):
    """The `TorchTrainer` of a (validated, path-resolved) config; `callbacks` are Train V2 UserCallbacks
    (`vpace.tune` forwards reports to Tune with one)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    s = cfg.scale
    elastic = s.min_workers != s.max_workers
    workers: int | tuple[int, int] = (s.min_workers, s.max_workers) if elastic else s.min_workers
    scaling_kw: dict[str, Any] = {}
    if resize_interval_s is not None:
        scaling_kw["elastic_resize_monitor_interval_s"] = resize_interval_s
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    scaling = ScalingConfig(num_workers=workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                            **scaling_kw)
    run = RunConfig(name=cfg.run.name, storage_path=cfg.run.storage,
                    failure_config=FailureConfig(max_failures=s.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=s.num_to_keep), callbacks=list(callbacks))
    return TorchTrainer(train_loop_per_worker, train_loop_config={"task": task, "cfg": cfg},
                        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
                        scaling_config=scaling, run_config=run)


def _read_history(checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        path = os.path.join(d, HISTORY_FILE)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        with open(os.path.join(d, META_FILE)) as f:
            return json.load(f).get("history", {})


def run_task(task: Task, cfg: Config, address: str | None = None, *,
             resize_interval_s: float | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Validate (before Ray starts), run the task on Ray Train, write CSV/PNG into the run dir."""
    validate(cfg)
    task.check(cfg)
    cfg = resolve_paths(cfg)
    started = _start_ray(address, cfg)
    try:
        result = build_trainer(task, cfg, resize_interval_s=resize_interval_s, callbacks=callbacks).fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    run_dir = run_dir_of(cfg)
    ckpt = result.checkpoint
    history = _read_history(ckpt) if ckpt is not None else {}
    if history:
        write_run_outputs(history, run_dir)
    path = None
    if ckpt is not None:
        path = f"{run_dir}/{os.path.basename(ckpt.path)}" if is_remote(run_dir) else ckpt.path
    return TrainResult(run_dir=run_dir, checkpoint=path, metrics=dict(result.metrics or {}), history=history)


def pretrain(cfg: Config, address: str | None = None, *,
             resize_interval_s: float | None = None) -> TrainResult:
    """`vpace pretrain`: self-supervised pre-training of `cfg` (local Ray unless `address`)."""
    from vpace.train.pretrain_task import PretrainTask

    return run_task(PretrainTask(), cfg, address, resize_interval_s=resize_interval_s)
