"""`vpace tune SEARCH.yaml`: validate the search file, run (or continue) the Tune experiment, write results.

Layout of an experiment (`<base run.storage>/tune/<name>/`): Tune's own state and one folder per trial,
`train/<trial id>/` the trials' Ray Train runs (checkpoints, metrics.csv), and the outputs `results.md`,
`results.csv`, `best_config.yaml`, `metric_vs_params.png`. Re-running the same command restores the
experiment (`Tuner.restore`): finished trials are kept, interrupted ones continue from their Train checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpace.config import ConfigError
from vpace.train.ray_session import start_ray, stop_ray
from vpace.tune import report
from vpace.tune.space import SearchSpec, load_spec
from vpace.tune.trainable import TRAIN_DIR, PretrainTrial

log = logging.getLogger(__name__)

SPEC_FILE = "vpace_search.json"  # the validated spec of the experiment; a resume must match it
# A trial's Tune actor only drives its Train run, whose workers reserve their own CPUs; an all-zero request is
# refused by Tune, so it asks for a little memory instead of a CPU the workers would then lack.
DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}


@dataclass
class TuneOutcome:
    """A finished (or re-read) search: one row per trial, the best one, and the files written."""

    experiment_dir: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_config: str | None
    results_md: str
    results_csv: str
    plot: str | None
    resumed: bool
    max_concurrent_trials: int
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [Path(self.results_md).read_text().rstrip(), ""]
        lines += [f"note: {n}" for n in self.notes]
        if self.best is not None:
            lines.append(f"best: trial {self.best['trial']} -> {self.best_config}")
        lines.append(f"wrote {self.results_md}, {self.results_csv}" + (f", {self.plot}" if self.plot else ""))
        return "\n".join(lines)


def max_concurrent(spec: SearchSpec, resources: dict[str, float]) -> int:
    """How many trials fit at once so that every trial's Train workers can all start (Train V2 gangs them)."""
    s = spec.base_config().scale
    need = {"CPU": s.min_workers * s.cpus_per_worker, **({"GPU": float(s.min_workers)} if s.use_gpu else {})}
    fits = min(math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in need.items())
    if fits < 1:
        have = ", ".join(f"{resources.get(k, 0):g} {k}" for k in need)
        raise ConfigError("scale.min_workers", f"one trial needs {need} but the cluster has {have}; lower "
                          "tune.workers_per_trial / scale.cpus_per_worker or pass --address")
    cap = spec.tune.max_concurrent
    return min(fits, cap) if cap else fits


def trial_dirname(trial: Any) -> str:
    """Short, filesystem-safe trial folders (pace strings hold '/' and ',')."""
    return f"trial_{trial.trial_id}"


def _check_same_search(spec: SearchSpec, exp_dir: Path) -> None:
    path = exp_dir / SPEC_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("digest") != spec.digest():
            raise ConfigError("space", f"experiment {exp_dir} was started from a different search file or "
                              f"base config ({old.get('path')}); pass another --name, or delete the folder")
    exp_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"digest": spec.digest(), "path": spec.path, "base": spec.base,
                                "space": [d.__dict__ for d in spec.dims], "tune": spec.tune.__dict__},
                               indent=1, default=str))


def build_tuner(spec: SearchSpec, exp_dir: Path, concurrency: int, resume: bool):
    """The Tuner of a search: restored when `exp_dir` holds a restorable experiment and `resume`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = spec.tune
    runs = str(exp_dir / TRAIN_DIR)
    trial = tune.with_parameters(PretrainTrial, spec=spec, runs_dir=runs)
    trainable = tune.with_resources(trial, DRIVER_RESOURCES)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        log.info("resuming search %s", exp_dir)
        return tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True), True
    epochs = spec.base_config().optim.epochs
    if t.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=t.max_t or epochs, grace_period=t.grace_period,
                                  reduction_factor=t.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    search_alg = None
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=t.seed)
    elif t.seed is not None:  # a generator ignores TuneConfig.max_concurrent_trials: give it the limit
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrency)
    tune_config = tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                  scheduler=scheduler, search_alg=search_alg,
                                  max_concurrent_trials=concurrency, trial_dirname_creator=trial_dirname)
    run_config = tune.RunConfig(name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=1,
                                failure_config=tune.FailureConfig(max_failures=t.max_failures))
    return tune.Tuner(trainable, param_space=spec.param_space(), tune_config=tune_config,
                      run_config=run_config), False


def collect_rows(grid: Any, spec: SearchSpec, exp_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: params, last/best proxy metric, epochs run, status."""
    metric, keys = spec.tune.metric, [d.key for d in spec.dims]
    max_t = spec.tune.max_t or spec.base_config().optim.epochs
    rows = []
    for r in grid:
        m = r.metrics or {}
        trial = m.get("trial_id") or Path(r.path).name.removeprefix("trial_")
        df = r.metrics_dataframe
        values = df[metric].dropna() if df is not None and metric in df else []
        best = (values.max() if spec.tune.mode == "max" else values.min()) if len(values) else None
        epochs = int(m.get("epoch", 0))
        status = (report.ERROR if r.error else report.NO_RESULT if metric not in m
                  else report.COMPLETED if epochs >= max_t else report.STOPPED)
        rows.append({"trial": trial, "status": status, "epochs": epochs,
                     "metric": float(m[metric]) if metric in m else None,
                     "best_metric": float(best) if best is not None else None,
                     "params": {k: r.config.get(k) for k in keys},
                     "run_dir": str(exp_dir / TRAIN_DIR / trial),
                     "error": str(r.error).strip().splitlines()[-1][:300] if r.error else None})
    return rows


def tune(
    yaml_path: str | Path,
    *,
    address: str | None = None,
    resume: bool = True,
    name: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> TuneOutcome:
    """Run the search of `yaml_path` (validated before Ray starts); continue it if it was interrupted.

    `name` defaults to the file's stem; `overrides` (`key=value`) change the base config like `--set`.
    """
    from ray.tune import Tuner

    from vpace.tune.proxy import ProxyPretrainTask

    spec = load_spec(yaml_path, name=name, overrides=overrides)
    ProxyPretrainTask().check(spec.base_config())  # data and proxy splits readable, before any trial starts
    exp_dir = Path(spec.base["run"]["storage"]) / "tune" / spec.name
    if not resume and Tuner.can_restore(str(exp_dir)):
        raise ConfigError("name", f"experiment {exp_dir} exists; resume it, pass another name or delete it")
    _check_same_search(spec, exp_dir)
    started = start_ray(address)
    try:
        import ray

        concurrency = max_concurrent(spec, ray.cluster_resources())
        tuner, resumed = build_tuner(spec, exp_dir, concurrency, resume)
        grid = tuner.fit()
    finally:
        if started:
            stop_ray()
    rows = collect_rows(grid, spec, exp_dir)
    md, csv_path = report.write_table(rows, spec, exp_dir)
    best = report.pick_best(rows, spec.tune.mode)
    best_cfg = report.write_best_config(best, spec, exp_dir) if best is not None else None
    png = report.plot_params(rows, spec, exp_dir)
    return TuneOutcome(str(exp_dir), rows, best, str(best_cfg) if best_cfg else None, str(md), str(csv_path),
                       str(png) if png else None, resumed, concurrency, spec.notes)
