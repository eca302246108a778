"""Driver side: validate, start (or join) Ray, run a `TorchTrainer` over a `Task`, collect the result.

Resume is by run name: Ray Train V2 restores `<run.storage>/<run.name>` when it exists, so re-running the same
command after a crash continues from its latest checkpoint (and a finished run returns at once). Before Ray
starts, `plan_resume` checks that checkpoint loads (else the previous good one is used, or the run fails at
once with a `CheckpointError` instead of spending its retries on it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vpace.config import Config, ConfigError, validate
from vpace.train.checkpoint import CheckpointError, ResumePlan, plan_resume, registered_checkpoints
from vpace.train.loop import HISTORY_FILE, run_dir_of, run_finished, train_loop_per_worker
from vpace.train.progress import is_remote, local_path, write_run_outputs
from vpace.train.ray_session import start_ray, stop_ray
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


def _check_fits(cfg: Config) -> Callable[[dict[str, float]], None]:
    """A local Ray must hold `min_workers` workers at once (Train V2 starts them as one gang)."""
    def check(res: dict[str, float]) -> None:
        s = cfg.scale
        if res.get("CPU", 0) < s.min_workers * s.cpus_per_worker:
            raise ConfigError("scale.min_workers", f"{s.min_workers} workers x {s.cpus_per_worker} CPUs do "
                              f"not fit this machine's {res.get('CPU', 0):g} CPUs (or pass --address)")
        if s.use_gpu and res.get("GPU", 0) < s.min_workers:
            raise ConfigError("scale.use_gpu", f"{s.min_workers} workers need as many GPUs; this machine "
                              f"has {res.get('GPU', 0):g} (set scale.use_gpu=false or pass --address)")

    return check


def build_trainer(task: Task, cfg: Config, *, resize_interval_s: float | None = None,
                  callbacks: Sequence[Any] = (), resume: ResumePlan | None = None):
    """The `TorchTrainer` of a (validated, path-resolved) config; `callbacks` are Train V2 UserCallbacks
    (`vpace.tune` forwards reports to Tune with one); `resume` from `plan_resume`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from vpace.train.fail_fast import FailFastOnCheckpointError

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
                    checkpoint_config=CheckpointConfig(num_to_keep=s.num_to_keep),
                    callbacks=[*callbacks, FailFastOnCheckpointError()])
    return TorchTrainer(train_loop_per_worker, train_loop_config={"task": task, "cfg": cfg, "resume": resume},
                        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
                        scaling_config=scaling, run_config=run)


def _read_history(checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        path = os.path.join(d, HISTORY_FILE)
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)


def _finished_run(cfg: Config, run_dir: str) -> TrainResult | None:
    """A local run whose latest registered checkpoint already ends it (same command re-run): its result,
    without starting Ray. None when there is training left to do."""
    from ray.train import Checkpoint

    record = registered_checkpoints(local_path(run_dir))
    if record is None or not run_finished(cfg.optim, int(record.metrics.get("step", 0)),
                                          int(record.metrics.get("epoch", 0))):
        return None
    path = str(local_path(run_dir) / record.latest)
    return TrainResult(run_dir=run_dir, checkpoint=path, metrics=record.metrics,
                       history=_read_history(Checkpoint.from_directory(path)))


def run_task(task: Task, cfg: Config, address: str | None = None, *,
             resize_interval_s: float | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Validate (before Ray starts), run the task on Ray Train, write CSV/PNG into the run dir."""
    validate(cfg)
    task.check(cfg)
    cfg = resolve_paths(cfg)
    run_dir = run_dir_of(cfg)
    resume = None if is_remote(run_dir) else plan_resume(local_path(run_dir))
    if resume is None and not is_remote(run_dir):
        finished = _finished_run(cfg, run_dir)
        if finished is not None:
            return finished
    from ray.train import ControllerError

    started = start_ray(address, check_local=_check_fits(cfg))
    try:
        result = build_trainer(task, cfg, resize_interval_s=resize_interval_s, callbacks=callbacks,
                               resume=resume).fit()
    except ControllerError as e:  # FailFastOnCheckpointError: the checkpoint's own one-line error
        if isinstance(e.controller_failure, CheckpointError):
            raise e.controller_failure from None
        raise
    finally:
        if started:
            stop_ray()
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
