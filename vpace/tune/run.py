"""`vpace tune SEARCH.yaml`: validate the search file, run (or continue) the Tune experiment, write results.

Layout of an experiment (`<base run.storage>/tune/<name>/`): Tune's own state and one folder per trial,
`train/<trial id>/` the trials' Ray Train runs (checkpoints, metrics.csv), and the outputs `results.md`,
`results.csv`, `best_config.yaml`, `metric_vs_params.png`, all from one ranking (`vpace.tune.ranking`).
Re-running the same command restores the experiment (`Tuner.restore`): finished trials are kept, interrupted
ones continue from their Train checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpace.config import ConfigError
from vpace.paths import check_storage
from vpace.train.launch import worker_resources
from vpace.train.ray_session import start_ray, stop_ray
from vpace.tune import report
from vpace.tune.ranking import COMPLETED, ERROR, NO_RESULT, STOPPED, Entry
from vpace.tune.space import REPEAT_KEY, SearchSpec, interval_keys, load_spec
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
    rows: list[dict[str, Any]]  # one per trial (`collect_rows`)
    ranking: list[Entry]  # one per configuration, best first (`vpace.tune.ranking.rank`)
    best: Entry | None
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
            lines.append(f"best: trial {self.best.name} -> {self.best_config}")
        lines.append(f"wrote {self.results_md}, {self.results_csv}" + (f", {self.plot}" if self.plot else ""))
        return "\n".join(lines)


def max_concurrent(spec: SearchSpec, resources: dict[str, float]) -> int:
    """How many trials fit at once so that every trial's Train workers can all start (Train V2 gangs them)."""
    s = spec.base_config().scale
    need = {k: v * s.min_workers for k, v in worker_resources(s).items()}
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


def search_algorithm(spec: SearchSpec, concurrency: int) -> Any:
    """Tune's search algorithm for `tune.search` (and `tune.repeats`: space.py's docstring says how)."""
    t = spec.tune
    if t.search == "optuna":
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        optuna = OptunaSearch(seed=t.seed)
        return Repeater(optuna, repeat=t.repeats) if t.repeats > 1 else optuna
    from ray.tune.search import BasicVariantGenerator

    # max_concurrent here: a generator ignores TuneConfig.max_concurrent_trials
    return BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrency,
                                 constant_grid_search=t.repeats > 1)


def trial_samples(spec: SearchSpec) -> int:
    """TuneConfig.num_samples: configurations (repeats of the grid) for a generator, which crosses them with
    the seed grid itself; trials for a Repeater, which hands out each configuration `repeats` times."""
    t = spec.tune
    return t.num_samples * (t.repeats if t.search == "optuna" else 1)


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
    if t.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.budget, grace_period=t.grace_period,
                                  reduction_factor=t.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=trial_samples(spec),
                                  scheduler=scheduler, search_alg=search_algorithm(spec, concurrency),
                                  max_concurrent_trials=concurrency, trial_dirname_creator=trial_dirname)
    run_config = tune.RunConfig(name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=1,
                                failure_config=tune.FailureConfig(max_failures=t.max_failures))
    return tune.Tuner(trainable, param_space=spec.param_space(), tune_config=tune_config,
                      run_config=run_config), False


def collect_rows(grid: Any, spec: SearchSpec, exp_dir: Path) -> list[dict[str, Any]]:
    """One row per trial: params, seed, status, epochs run, and each proxy measurement (`history`: epoch,
    value, interval) as Tune recorded it."""
    metric, keys = spec.tune.metric, [d.key for d in spec.dims]
    lo, hi = interval_keys(metric)
    base_seed = int(spec.base["run"]["seed"])
    rows = []
    for r in grid:
        m, config = r.metrics or {}, r.config or {}
        trial = m.get("trial_id") or Path(r.path).name.removeprefix("trial_")
        df = r.metrics_dataframe
        history = []
        if df is not None and metric in df and "epoch" in df:
            for rec in df[df[metric].notna()].to_dict("records"):
                ends = [float(rec[k]) if k in rec and rec[k] == rec[k] else None for k in (lo, hi)]
                history.append({"epoch": int(rec["epoch"]), "value": float(rec[metric]), "lo": ends[0],
                                "hi": ends[1]})
        history = sorted({p["epoch"]: p for p in history}.values(), key=lambda p: p["epoch"])
        epochs = int(m.get("epoch", 0))
        status = (ERROR if r.error else NO_RESULT if metric not in m
                  else COMPLETED if epochs >= spec.budget else STOPPED)
        index = int(config.get(REPEAT_KEY, 0) or 0)
        rows.append({"trial": trial, "status": status, "epochs": epochs, "history": history,
                     "metric": float(m[metric]) if metric in m else None,
                     "queries": m.get("proxy_queries"), "seed_index": index, "seed": base_seed + index,
                     "params": {k: config.get(k) for k in keys},
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

    from vpace.tune.proxy import PROXY_PRETRAIN

    spec = load_spec(yaml_path, name=name, overrides=overrides)
    PROXY_PRETRAIN.check(spec.base_config())  # data and proxy splits readable, before any trial starts
    check_storage(spec.base["run"]["storage"])
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
    out = report.write_outputs(rows, spec, exp_dir)
    return TuneOutcome(str(exp_dir), rows, out.ranking, out.best, out.best_config, out.results_md,
                       out.results_csv, out.plot, resumed, concurrency, spec.notes)
