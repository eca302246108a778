"""Run configuration: a tree of dataclasses, loaded from YAML and validated on load.

Why dataclasses and not a dict: every field has a type and a default that docs and `--set` overrides can
name, and a bad value fails *before* Ray starts, with a message naming the dotted field (``pace.paces``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vpace.config_validate import ConfigError, validate
from vpace.config_validate import parse_fraction_list as parse_fraction_list  # re-exported

# torchvision's Kinetics-400 video-model normalisation: the default of every run (AugmentConfig.mean / .std).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass
class DataConfig:
    """Where the videos are and how clips are cut from them."""

    index: str = "runs/data/synthetic"  # folder tree, UCF101/HMDB51 split dir, Kinetics CSV or index JSON
    split: str = "train"
    split_id: int = 1
    clip_len: int = 16
    height: int = 128  # decode size (short side 128 -> 128x171 like the paper)
    width: int = 171
    clips_per_video: int = 2  # n clips per video at distinct paces (same-context contrast)
    start: str = "fit"  # fit | wrap: training clip starts only where the clip fits, or anywhere (it loops)
    epoch_size: int | None = None  # items per epoch; None = len(index) (paper: ~90k on UCF101)
    num_workers: int = 2  # DataLoader worker processes per training worker
    decode_threads: int = 1
    cache_dir: str | None = None  # decoded-frame cache (speeds up small data sets on CPU)


@dataclass
class AugmentConfig:
    """Per-clip crop/flip and per-frame colour jitter (paper §3.1 'Avoid shortcuts')."""

    crop: int = 112
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    per_frame: bool = True
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD


@dataclass
class ModelConfig:
    backbone: str = "r21d"
    weights: str | None = None  # local backbone weights (.safetensors or .pt state dict)
    channels_last: bool = False


@dataclass
class PaceConfig:
    """Pace prediction (Eq. 1) + optional contrastive term (Eq. 2/3), total Eq. 4."""

    paces: str = "1,2,3,4"
    lambda_cls: float = 1.0
    lambda_ctr: float = 0.1
    ctr_mode: str = "same_context"  # none | same_context | same_pace
    proj_head: str = "linear"  # linear | mlp (Table 2, last row)
    proj_dim: int = 128
    tau: float = 0.1


@dataclass
class RSPNetConfig:
    """RSPNet: relative speed perception (margin ranking) + A-VID (MoCo InfoNCE)."""

    speeds: str = "1,2"
    margin: float = 0.15
    weight_a: float = 1.0  # A: appearance (A-VID)
    weight_m: float = 1.0  # M: motion (relative speed perception)
    momentum: float = 0.999
    queue_size: int = 16384
    dim: int = 128
    tau: float = 0.07


@dataclass
class OptimConfig:
    """The paper's recipe: SGD 1e-3, momentum 0.9, /10 every 6 epochs, 18 epochs, batch 30."""

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 30  # global batch in videos at the reference world size
    base_batch_size: int = 30  # lr is scaled by actual_global_batch / base_batch_size
    epochs: int = 18
    lr_step_epochs: int = 6
    lr_gamma: float = 0.1
    max_steps: int | None = None  # stop early (smoke tests)
    amp: bool = True  # autocast on GPU only


@dataclass
class ScaleConfig:
    """Ray Train scaling and fault tolerance."""

    min_workers: int = 1
    max_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 3
    checkpoint_every: int = 500  # steps; a checkpoint is also written at each epoch end
    num_to_keep: int = 2


@dataclass
class RunConfig:
    name: str = "pretrain"
    storage: str = "runs"
    seed: int = 0
    fail_at_step: int | None = None  # test-only fault injection: raise in rank 0 at this global step
    fail_mode: str = "raise"  # raise | exit


@dataclass
class ProxyConfig:
    """Downstream proxy measured during pre-training: kNN retrieval on a labeled split (Tune's objective).

    Pretext losses of different pace sets are not comparable (different class counts), so a search ranks
    trials by what the representation is for: nearest-neighbour retrieval top-1 of the current backbone.
    """

    index: str | None = None  # labeled data (same formats as data.index); None = off
    every_epochs: int = 1
    train_split: str = "train"
    test_split: str = "test"
    num_clips: int = 3  # clips per video (the full protocol uses 10; the proxy is cheaper)
    layer: str = "p5"
    max_videos: int | None = None  # cap per split, for speed


@dataclass
class Config:
    method: str = "pace_ctr"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pace: PaceConfig = field(default_factory=PaceConfig)
    rspnet: RSPNetConfig = field(default_factory=RSPNetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------- loading


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check/convert a YAML value to the annotated type; error names the field."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError:
                pass  # try the next member; the error below names the whole union
        raise ConfigError(name, f"expected {tp}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(name, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-2` (no dot) as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(name, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(name, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. `paces: 1` or `speeds: 2`
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    raise ConfigError(name, f"unsupported type {tp}")  # pragma: no cover - schema bug


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys by their dotted name."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}", f"unknown field (valid: {', '.join(sorted(names))})")
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value, dotted = hints[f.name], data[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(dotted, f"expected a mapping, got {value!r}")
            kwargs[f.name] = from_dict(tp, value, f"{dotted}.")
        else:
            kwargs[f.name] = _coerce(value, tp, dotted)
    return cls(**kwargs)


def _set_value(key: str, raw: str) -> Any:
    """The YAML value of `--set key=raw`; a bad one is a one-line error naming the field."""
    if not raw.strip():  # e.g. `--set pace.paces=""`: the shell ate the quotes
        raise ConfigError(key, f"no value after '{key}=' (to clear an optional field write {key}=null)")
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(key, f"--set value {raw!r} is not valid YAML ({problem}); quote it to mean a "
                               "string") from None


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b=value` override (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(assignment, "override must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(key, "override must look like key.sub=value")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{p}' is not a section")
    node[parts[-1]] = _set_value(key, raw)


def named_configs() -> dict[str, Path]:
    """Configs shipped in vpace/configs/*.yaml, by name."""
    root = resources.files("vpace") / "configs"
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = Path(str(entry))
    return dict(sorted(out.items()))


def resolve_config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        return p
    named = named_configs()
    if str(name_or_path) not in named:
        known = ", ".join(named)
        raise FileNotFoundError(f"no config file or named config '{name_or_path}' (named: {known})")
    return named[str(name_or_path)]


def load_config(
    name_or_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    data: dict[str, Any] | None = None,
) -> Config:
    """Load a named config or YAML path (or a dict), apply `key=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(str(path), f"not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(str(path), "top level must be a mapping")
    if data is not None:
        raw = deep_merge(raw, data)
    for ov in overrides:
        set_dotted(raw, ov)
    cfg = from_dict(Config, raw)
    validate(cfg)
    return cfg


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
