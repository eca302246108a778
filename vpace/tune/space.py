"""Search files: YAML -> a validated `SearchSpec` (base config, fixed overrides, search space, Tune settings).

Why validate everything here, before Ray starts: a search runs for hours, so a typo in a key, an empty choice
list or a pace string that does not parse must fail in a second with the entry named, not as the first trial's
traceback. Every choice value (and both ends of every range) is applied to the base config and run through
`vpace.config.load_config`, so the checks are exactly the ones `vpace pretrain` applies.

File format (tune_configs/*.yaml)::

    base: smoke                      # named config (vpace/configs) or a path (relative to this file or cwd)
    set: {optim.epochs: 3}           # fixed dotted overrides of the base config
    proxy: {num_clips: 2}            # the objective's settings (vpace.config.ProxyConfig)
    space:                           # dotted Config field -> one distribution
      pace.paces: {choice: ["1,2,3", "1,2,3,4"]}
      pace.lambda_ctr: {loguniform: [0.01, 1.0]}
      optim.lr: {uniform: [0.001, 0.01]}
      pace.ctr_mode: {grid: [none, same_context]}
    tune: {metric: proxy_top1, mode: max, num_samples: 8, scheduler: asha, search: random, max_t: 3}
    reference: {source: ..., metric: ..., rows: [...]}   # optional: published numbers (vpace.tune.reference)

`tune.repeats: N` runs every configuration with the seeds run.seed + 0 .. N-1 (one trial each) and ranks it
by the mean: for random/grid search a grid over the seed index whose random values stay constant across it
(Tune's `constant_grid_search`; Tune's `Repeater` wraps only a `Searcher`), for Optuna Tune's `Repeater`,
which also hands Optuna the mean. It needs `scheduler: fifo`: ASHA would judge each seed on its own, so
the seeds of one configuration would end at different epochs and their mean would mix budgets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpace.config import (
    Config,
    ConfigError,
    deep_merge,
    from_dict,
    load_config,
    resolve_config_path,
    yaml_mapping,
)
from vpace.tune.reference import Reference, parse_reference

SECTIONS = ("base", "set", "proxy", "space", "tune", "reference")
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform")
PROXY_METRICS = ("proxy_top1", "proxy_top5", "proxy_map", "proxy_knn")  # what vpace.tune.proxy reports
INTERVAL_LEVEL, INTERVAL_RESAMPLES = 0.95, 1000  # bootstrap interval over the query videos, per proxy metric
REPEAT_KEY = "__trial_index__"  # a trial's seed index (ray.tune.search.repeater.TRIAL_INDEX, for both paths)
# Searching these would make trials incomparable (objective, resources) or clash with per-trial run dirs.
FORBIDDEN = {
    "proxy": "the objective must be the same for every trial",
    "scale": "trials must be the same size so max_concurrent_trials holds (use tune.workers_per_trial)",
    "run.name": "each trial gets its own run name",
    "run.storage": "trials run under the experiment dir",
}
MAX_COMBOS_CHECKED = 512  # categorical cross products up to this size are checked combination by combination


def interval_keys(metric: str) -> tuple[str, str]:
    """Result keys of the low / high end of a proxy metric's bootstrap interval."""
    return f"{metric}_lo", f"{metric}_hi"


class SearchSpaceError(ConfigError):
    """A bad entry of a search file; `field_name` is the entry (e.g. ``space.pace.paces``)."""

    def __init__(self, entry: str, msg: str, path: str | Path | None = None) -> None:
        super().__init__(entry, f"{msg}" + (f" (in {path})" if path else ""))


@dataclass
class TuneSettings:
    """The `tune:` section."""

    metric: str = "proxy_top1"
    mode: str = "max"
    num_samples: int | None = None  # None: 8 for random/optuna, 1 for grid (which repeats the grid)
    scheduler: str = "asha"  # asha | fifo
    search: str = "random"  # random | grid | optuna
    max_t: int | None = None  # epochs; None = optim.epochs
    grace_period: int = 1  # epochs before ASHA's first cut
    reduction_factor: int = 2
    workers_per_trial: int | None = None  # None = scale.min_workers
    max_concurrent: int | None = None  # cap below what the cluster allows
    max_failures: int = 1  # per trial, on the Tune side (a crashed trial driver restarts and resumes)
    seed: int | None = None  # seed of the random / optuna sampler (None: not reproducible)
    repeats: int = 1  # seeds per configuration (run.seed + 0 .. repeats-1); ranked by their mean


@dataclass
class Dimension:
    """One searched field: `kind` in DISTRIBUTIONS, `values` = the choices or (low, high)."""

    key: str
    kind: str
    values: tuple[Any, ...]

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid")


@dataclass
class SearchSpec:
    """A validated search file. `base` is the fully resolved base config (absolute paths) as a plain dict."""

    path: str
    name: str
    base: dict[str, Any]
    dims: list[Dimension]
    tune: TuneSettings
    notes: list[str] = field(default_factory=list)
    reference: Reference | None = None  # published numbers shown beside the results (not part of `digest`)

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The pre-training config of one trial (dotted params over the base, the seed index of a repeat
        added to run.seed); validated."""
        params = dict(params)
        index = int(params.pop(REPEAT_KEY, 0) or 0)
        cfg = load_config(data=deep_merge(self.base, nest(params)))
        cfg.run.seed += index
        return cfg

    @property
    def budget(self) -> int:
        """Epochs of a trial that runs the full budget (`tune.max_t`, default optim.epochs)."""
        return self.tune.max_t or int(self.base["optim"]["epochs"])

    def rungs(self) -> list[int]:
        """Epochs at which trials are compared, ascending: ASHA's milestones (its own formula, one bracket)
        and the full budget; only the budget without ASHA."""
        t, top = self.tune, self.budget
        if t.scheduler != "asha":
            return [top]
        count = int(np.log(top / t.grace_period) / np.log(t.reduction_factor) + 1)
        return sorted({*(t.grace_period * t.reduction_factor ** k for k in range(count)), top})

    def base_config(self) -> Config:
        return load_config(data=self.base)

    def digest(self) -> str:
        """Identity of the experiment: a resumed run must search the same space from the same base."""
        blob = json.dumps([self.base, [dataclasses.astuple(d) for d in self.dims],
                           dataclasses.asdict(self.tune)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def param_space(self) -> dict[str, Any]:
        """Ray Tune domains keyed by the dotted field names."""
        from ray import tune

        out: dict[str, Any] = {}
        if self.tune.repeats > 1 and self.tune.search != "optuna":  # optuna: Repeater sets the index
            out[REPEAT_KEY] = tune.grid_search(list(range(self.tune.repeats)))
        for d in self.dims:
            if d.kind == "grid" or (d.kind == "choice" and self.tune.search == "grid"):
                out[d.key] = tune.grid_search(list(d.values))
            elif d.kind == "choice":
                out[d.key] = tune.choice(list(d.values))
            elif d.kind == "uniform":
                out[d.key] = tune.uniform(*d.values)
            else:
                out[d.key] = tune.loguniform(*d.values)
        return out


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"pace.paces": "1,2"} -> {"pace": {"paces": "1,2"}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def leaf_type(key: str) -> Any:
    """Annotated type of a dotted Config leaf field; KeyError naming the valid fields if there is none."""
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the config"
            raise KeyError(f"unknown key: '{part}' is not a field of {where} (valid: "
                           f"{', '.join(sorted(hints))}); keys are dotted Config fields like pace.paces")
        tp = hints[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise KeyError(f"unknown key: '{key}' is a section, not a field (e.g. {key}."
                               f"{next(iter(typing.get_type_hints(tp)))})")
            return tp
        if not dataclasses.is_dataclass(tp):
            raise KeyError(f"unknown key: '{'.'.join(parts[: i + 1])}' is a field, not a section")
        cls = tp
    raise KeyError("unknown key: empty")  # pragma: no cover - split always yields a part


def _numeric(tp: Any) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args)


def _check_values(base: dict[str, Any], assignment: dict[str, Any], entry: str, what: str, path: str) -> None:
    """Apply `assignment` to the base config and validate; the error names the entry and the value."""
    try:
        load_config(data=deep_merge(base, nest(assignment)))
    except ConfigError as e:
        raise SearchSpaceError(entry, f"{what} is not a valid config: {e}", path) from None


def _parse_dimension(key: Any, raw: Any, base: dict[str, Any], search: str, path: str) -> Dimension:
    entry = f"space.{key}"
    if not isinstance(key, str) or not key:
        raise SearchSpaceError(f"space.{key!r}", "keys must be dotted Config field names", path)
    try:
        tp = leaf_type(key)
    except KeyError as e:
        raise SearchSpaceError(entry, str(e.args[0]), path) from None
    for prefix, why in FORBIDDEN.items():
        if key == prefix or key.startswith(prefix + "."):
            raise SearchSpaceError(entry, f"cannot be searched: {why}", path)
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        raise SearchSpaceError(entry, f"must be one mapping {{kind: values}} with kind in {DISTRIBUTIONS}, "
                               f"got {raw!r}", path)
    kind, values = next(iter(raw.items()))
    if not isinstance(values, list):
        raise SearchSpaceError(entry, f"{kind} needs a list, got {values!r}", path)
    if kind in ("choice", "grid"):
        if not values:
            raise SearchSpaceError(entry, f"empty {kind} list: give at least one value", path)
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise SearchSpaceError(entry, f"duplicate values in {values!r}", path)
        for i, v in enumerate(values):
            _check_values(base, {key: v}, entry, f"{kind} value #{i + 1} {v!r}", path)
        return Dimension(key, kind, tuple(values))
    if search == "grid":
        raise SearchSpaceError(entry, f"search: grid needs choice/grid lists, not a {kind} range", path)
    if not _numeric(tp):
        raise SearchSpaceError(entry, f"{kind} needs a numeric field; {key} is {tp}", path)
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(values) != 2 or len(nums) != 2:
        raise SearchSpaceError(entry, f"{kind} needs [low, high] numbers, got {values!r}", path)
    low, high = float(values[0]), float(values[1])
    if not low < high:
        raise SearchSpaceError(entry, f"bad {kind} bounds [{low:g}, {high:g}]: need low < high", path)
    if kind == "loguniform" and low <= 0:
        raise SearchSpaceError(entry, f"bad loguniform bounds [{low:g}, {high:g}]: need 0 < low", path)
    if float not in (typing.get_args(tp) or (tp,)):
        raise SearchSpaceError(entry, f"{key} is an integer field: use choice/grid, not {kind}", path)
    for end, v in (("low", low), ("high", high)):
        _check_values(base, {key: v}, entry, f"{kind} {end} bound {v:g}", path)
    return Dimension(key, kind, (low, high))


def _check_combinations(base: dict[str, Any], dims: list[Dimension], path: str) -> None:
    """Categorical values can be valid alone but not together (2 clips at distinct paces need 2 paces)."""
    cat = [d for d in dims if d.categorical]
    if len(cat) < 2:
        return
    total = 1
    for d in cat:
        total *= len(d.values)
    if total > MAX_COMBOS_CHECKED:
        return
    for combo in itertools.product(*(d.values for d in cat)):
        assignment = dict(zip((d.key for d in cat), combo, strict=True))
        entries = "+".join(f"space.{k}" for k in assignment)
        _check_values(base, assignment, entries, f"combination {assignment}", path)


def _check_tune(t: TuneSettings, cfg: Config, path: str) -> None:
    def check(cond: bool, name: str, msg: str) -> None:
        if not cond:
            raise SearchSpaceError(f"tune.{name}", msg, path)

    check(t.metric in PROXY_METRICS, "metric", f"must be one of {PROXY_METRICS} (the downstream proxy), "
          f"got {t.metric!r}")
    check(t.mode in ("max", "min"), "mode", f"must be max or min, got {t.mode!r}")
    check(t.scheduler in ("asha", "fifo"), "scheduler", f"must be asha or fifo, got {t.scheduler!r}")
    check(t.search in ("random", "grid", "optuna"), "search",
          f"must be random, grid or optuna, got {t.search!r}")
    check(t.num_samples is None or t.num_samples >= 1, "num_samples", "must be >= 1")
    epochs = cfg.optim.epochs
    check(t.max_t is None or 1 <= t.max_t <= epochs, "max_t", f"must be in [1, optim.epochs={epochs}]")
    check(1 <= t.grace_period <= (t.max_t or epochs), "grace_period", "must be in [1, max_t]")
    check(t.reduction_factor >= 2, "reduction_factor", "must be >= 2")
    check(t.workers_per_trial is None or t.workers_per_trial >= 1, "workers_per_trial", "must be >= 1")
    check(t.max_concurrent is None or t.max_concurrent >= 1, "max_concurrent", "must be >= 1")
    check(t.max_failures >= 0, "max_failures", "must be >= 0")
    check(t.repeats >= 1, "repeats", "must be >= 1")
    check(t.repeats == 1 or t.scheduler == "fifo", "repeats",
          "repeats > 1 needs scheduler: fifo (ASHA would stop each seed on its own result, so the seeds of a "
          "configuration would end at different epochs and their mean would mix budgets)")
    if t.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise SearchSpaceError("tune.search", "optuna is not installed: pip install 'vpace[optuna]' "
                                   "(or use search: random)", path) from None


def _resolve_base(name: Any, path: Path) -> Path:
    if not isinstance(name, str) or not name:
        raise SearchSpaceError("base", f"must name a config (e.g. smoke) or a YAML path, got {name!r}", path)
    local = path.parent / name
    if Path(name).suffix in (".yaml", ".yml") and local.is_file():
        return local
    try:
        return resolve_config_path(name)
    except FileNotFoundError as e:
        raise SearchSpaceError("base", str(e), path) from None


def load_spec(path: str | Path, *, name: str | None = None, overrides: list[str] | tuple[str, ...] = ()
              ) -> SearchSpec:
    """Read and validate a search file (no Ray, no data reads beyond the config checks).

    `overrides` are `key=value` strings applied to the base config after `set:` (like `vpace pretrain --set`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search file not found: {path}")
    raw = yaml_mapping(path, SearchSpaceError)
    for key in raw:
        if key not in SECTIONS:
            raise SearchSpaceError(str(key), f"unknown section (valid: {', '.join(SECTIONS)})", path)
    fixed, proxy, space = raw.get("set") or {}, raw.get("proxy") or {}, raw.get("space") or {}
    for sec, val in (("set", fixed), ("proxy", proxy), ("space", space), ("tune", raw.get("tune") or {})):
        if not isinstance(val, dict):
            raise SearchSpaceError(sec, f"must be a mapping, got {val!r}", path)
    for key in fixed:
        try:
            leaf_type(str(key))
        except KeyError as e:
            raise SearchSpaceError(f"set.{key}", str(e.args[0]), path) from None
    if not space:
        raise SearchSpaceError("space", "is empty: nothing to search", path)

    base_path = _resolve_base(raw.get("base", "smoke"), path)
    try:
        cfg = load_config(base_path, overrides=list(overrides),  # `--set` wins over `set:`
                          data=deep_merge(nest({str(k): v for k, v in fixed.items()}), {"proxy": proxy}))
        tune_settings = from_dict(TuneSettings, raw.get("tune") or {}, "tune.")
    except ConfigError as e:
        if isinstance(e, SearchSpaceError):
            raise
        raise SearchSpaceError(e.field_name, str(e), path) from None
    _check_tune(tune_settings, cfg, str(path))

    notes = []
    workers = tune_settings.workers_per_trial or cfg.scale.min_workers
    if (cfg.scale.min_workers, cfg.scale.max_workers) != (workers, workers):
        notes.append(f"trials run with a fixed {workers} worker(s) (scale.min_workers = scale.max_workers = "
                     f"{workers}) so concurrent trials cannot take each other's CPUs/GPUs")
        cfg.scale.min_workers = cfg.scale.max_workers = workers
    from vpace.paths import resolve_paths

    if cfg.proxy.index is None:  # the pre-training data's train/test splits: the usual gallery/queries
        cfg.proxy.index = cfg.data.index
    cfg = resolve_paths(cfg)  # absolute: trials run in their own working directory
    base = cfg.to_dict()
    try:
        load_config(data=base)
    except ConfigError as e:
        raise SearchSpaceError("tune.workers_per_trial", str(e), path) from None

    dims = [_parse_dimension(k, v, base, tune_settings.search, str(path)) for k, v in space.items()]
    _check_combinations(base, dims, str(path))
    if tune_settings.repeats > 1 and any(d.key == "run.seed" for d in dims):
        raise SearchSpaceError("space.run.seed", "cannot be searched with tune.repeats > 1: the repeats set "
                               "the seed", path)
    if tune_settings.search == "optuna" and any(d.kind == "grid" for d in dims):
        bad = next(d.key for d in dims if d.kind == "grid")
        raise SearchSpaceError(f"space.{bad}", "optuna cannot take grid entries; use choice", path)
    if tune_settings.num_samples is None:
        tune_settings.num_samples = 1 if tune_settings.search == "grid" else 8
    reference = None
    if raw.get("reference") is not None:
        reference = parse_reference(raw["reference"], dims,
                                    lambda entry, msg: SearchSpaceError(entry, msg, path))
    return SearchSpec(str(path.resolve()), name or path.stem, base, dims, tune_settings, notes, reference)
