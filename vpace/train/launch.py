"""Driver side: validate, check storage and data, start (or join) Ray, run a `TorchTrainer` over a
`TrainSpec`, collect the result.

Resume is by run name: Ray Train V2 restores `<run.storage>/<run.name>` when it exists, so re-running the same
command after a crash continues from its latest checkpoint, and a finished run returns at once without Ray.
Before Ray starts, a local run's checkpoints are checked by the readers' rule (`find_latest`): a run whose
checkpoints are all broken fails here with one `CheckpointError`, not after `max_failures` retries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vpace.config import Config, ConfigError, ScaleConfig, validate
from vpace.paths import check_storage, is_remote, local_path, resolve_paths, run_dir_of
from vpace.train.checkpoint import CheckpointError, find_latest, is_checkpoint, read_meta
from vpace.train.loop import HISTORY_FILE, REPORT_FILE, run_finished, train_loop_per_worker
from vpace.train.progress import write_run_outputs
from vpace.train.ray_session import start_ray, stop_ray
from vpace.train.spec import TrainSpec


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
        short = sorted(k for k, v in s.worker_resources.items() if res.get(k, 0) < s.min_workers * v)
        if short:
            raise ConfigError("scale.worker_resources", f"a local Ray has no {short} for {s.min_workers} "
                              "workers (custom resources come with a cluster: pass --address)")

    return check


def worker_resources(s: ScaleConfig) -> dict[str, float]:
    """What one Train worker reserves: its CPUs, a GPU with `use_gpu`, and `worker_resources`."""
    return {**s.worker_resources, "CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}


def build_trainer(spec: TrainSpec, cfg: Config, *, resize_interval_s: float | None = None,
                  callbacks: Sequence[Any] = ()):
    """The `TorchTrainer` of a (validated, path-resolved) config; `callbacks` are Train V2 UserCallbacks
    (`vpace.tune` forwards reports to Tune with one)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from vpace.train.fail_fast import FailFastOnCheckpointError

    s = cfg.scale
    elastic = s.min_workers != s.max_workers
    workers: int | tuple[int, int] = (s.min_workers, s.max_workers) if elastic else s.min_workers
    scaling_kw: dict[str, Any] = {}
    if resize_interval_s is not None:
        scaling_kw["elastic_resize_monitor_interval_s"] = resize_interval_s
    scaling = ScalingConfig(num_workers=workers, use_gpu=s.use_gpu, resources_per_worker=worker_resources(s),
                            **scaling_kw)
    run = RunConfig(name=cfg.run.name, storage_path=cfg.run.storage,
                    failure_config=FailureConfig(max_failures=s.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=s.num_to_keep),
                    callbacks=[*callbacks, FailFastOnCheckpointError()])
    return TorchTrainer(train_loop_per_worker, train_loop_config={"spec": spec, "cfg": cfg},
                        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
                        scaling_config=scaling, run_config=run)


def _read_json(checkpoint_dir: str, name: str) -> dict[str, Any]:
    path = os.path.join(checkpoint_dir, name)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _finished_run(cfg: Config, run_dir: str) -> TrainResult | None:
    """A local run whose newest good checkpoint already ends it (the same command re-run): its result
    without starting Ray; None when there is training left (or nothing to check). Raises `CheckpointError`
    when the run has checkpoints and none loads."""
    root = local_path(run_dir)
    if not root.is_dir() or not any(is_checkpoint(p) for p in root.iterdir()):
        return None
    latest = find_latest(root)  # warns about each newer broken one
    meta = read_meta(latest)
    if not run_finished(cfg.optim, int(meta.get("step", 0)), int(meta.get("epoch", 0))):
        return None
    return TrainResult(run_dir=run_dir, checkpoint=str(latest), metrics=_read_json(str(latest), REPORT_FILE),
                       history=_read_json(str(latest), HISTORY_FILE))


def run_task(spec: TrainSpec, cfg: Config, address: str | None = None, *,
             resize_interval_s: float | None = None, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Validate and check (before Ray starts), run `spec` on Ray Train, write CSV/PNG into the run dir."""
    validate(cfg)
    check_storage(cfg.run.storage)
    spec.check(cfg)
    cfg = resolve_paths(cfg)
    run_dir = run_dir_of(cfg)
    if not is_remote(run_dir) and (finished := _finished_run(cfg, run_dir)) is not None:
        return finished
    from ray.train import ControllerError

    started = start_ray(address, check_local=_check_fits(cfg))
    try:
        result = build_trainer(spec, cfg, resize_interval_s=resize_interval_s, callbacks=callbacks).fit()
    except ControllerError as e:  # FailFastOnCheckpointError: the checkpoint's own one-line error
        if isinstance(e.controller_failure, CheckpointError):
            raise e.controller_failure from None
        raise
    finally:
        if started:
            stop_ray()
    ckpt = result.checkpoint
    history: dict[str, Any] = {}
    if ckpt is not None:
        with ckpt.as_directory() as d:
            history = _read_json(d, HISTORY_FILE)
    if history:
        write_run_outputs(history, run_dir)
    path = None
    if ckpt is not None:
        path = f"{run_dir}/{os.path.basename(ckpt.path)}" if is_remote(run_dir) else ckpt.path
    return TrainResult(run_dir=run_dir, checkpoint=path, metrics=dict(result.metrics or {}), history=history)


def pretrain(cfg: Config, address: str | None = None, *,
             resize_interval_s: float | None = None) -> TrainResult:
    """`vpace pretrain`: self-supervised pre-training of `cfg` (local Ray unless `address`)."""
    from vpace.train.pretraining import PRETRAIN

    return run_task(PRETRAIN, cfg, address, resize_interval_s=resize_interval_s)
