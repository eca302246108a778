"""Run configuration: a tree of dataclasses, loaded from YAML and validated on load.

Why dataclasses and not a dict: every field has a type and a default that docs and `--set` overrides can
name, and a bad value fails *before* Ray starts, with a message naming the dotted field (``pace.paces``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

METHODS = ("pace", "pace_ctr", "rspnet")
CTR_MODES = ("none", "same_context", "same_pace")
PROJ_HEADS = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adamw")
KNOWN_BACKBONES = ("c3d", "r3d", "r21d", "s3d_g", "r21d_tiny", "tv_r3d_18", "tv_r2plus1d_18", "tv_s3d")


class ConfigError(ValueError):
    """A config value is invalid; the message starts with the dotted field name."""

    def __init__(self, field_name: str, msg: str) -> None:
        super().__init__(f"config field '{field_name}': {msg}")
        self.field_name = field_name


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
    mean: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
    std: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)


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
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as e:
                errors.append(str(e))
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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"expected a number, got {value!r}")
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


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b=value` override (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(assignment, "override must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{p}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


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
        raw = _deep_merge(raw, data)
    for ov in overrides:
        set_dotted(raw, ov)
    cfg = from_dict(Config, raw)
    validate(cfg)
    return cfg


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------ validation


def parse_fraction_list(text: str, name: str) -> tuple[Fraction, ...]:
    """'1/3,1/2,1,2' -> sorted unique Fractions; the error names the field and the bad item."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise ConfigError(name, "must list at least one value, e.g. '1,2,3,4'")
    out = []
    for s in items:
        try:
            fr = Fraction(s)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(name, f"'{s}' is not a number or fraction like 1/3") from None
        if fr <= 0:
            raise ConfigError(name, f"'{s}' must be > 0")
        out.append(fr)
    if len(set(out)) != len(out):
        raise ConfigError(name, f"duplicate values in '{text}'")
    return tuple(sorted(out))


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(name, msg)


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express."""
    _check(cfg.method in METHODS, "method", f"must be one of {METHODS}, got {cfg.method!r}")
    d, a, o, s = cfg.data, cfg.augment, cfg.optim, cfg.scale
    _check(bool(d.index), "data.index", "must name a data folder, split dir, CSV or index JSON")
    _check(d.clip_len >= 1, "data.clip_len", f"must be >= 1, got {d.clip_len}")
    _check(d.height >= 1 and d.width >= 1, "data.height", "decode size must be positive")
    _check(d.clips_per_video >= 1, "data.clips_per_video", "must be >= 1")
    _check(d.epoch_size is None or d.epoch_size >= 1, "data.epoch_size", "must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.decode_threads >= 0, "data.decode_threads", "must be >= 0")
    _check(a.crop >= 1, "augment.crop", "must be >= 1")
    _check(
        a.crop <= min(d.height, d.width),
        "augment.crop",
        f"crop {a.crop} is larger than the decoded frames {d.height}x{d.width} (data.height x data.width)",
    )
    for f in ("flip_p", "jitter_p"):
        v = getattr(a, f)
        _check(0.0 <= v <= 1.0, f"augment.{f}", f"is a probability, got {v}")
    for f in ("brightness", "contrast", "saturation"):
        _check(getattr(a, f) >= 0, f"augment.{f}", "must be >= 0")
    _check(0 <= a.hue <= 0.5, "augment.hue", f"must be in [0, 0.5], got {a.hue}")
    _check(all(v > 0 for v in a.std), "augment.std", "must be > 0")
    _check(cfg.model.backbone in KNOWN_BACKBONES, "model.backbone",
           f"unknown backbone {cfg.model.backbone!r} (valid: {', '.join(KNOWN_BACKBONES)})")

    p = cfg.pace
    paces = parse_fraction_list(p.paces, "pace.paces")
    _check(p.lambda_cls >= 0, "pace.lambda_cls", f"must be >= 0, got {p.lambda_cls}")
    _check(p.lambda_ctr >= 0, "pace.lambda_ctr", f"must be >= 0, got {p.lambda_ctr}")
    _check(p.ctr_mode in CTR_MODES, "pace.ctr_mode", f"must be one of {CTR_MODES}, got {p.ctr_mode!r}")
    _check(p.proj_head in PROJ_HEADS, "pace.proj_head", f"must be one of {PROJ_HEADS}")
    _check(p.proj_dim >= 1, "pace.proj_dim", "must be >= 1")
    _check(1e-3 <= p.tau <= 10, "pace.tau", f"must be in [0.001, 10], got {p.tau}")
    if cfg.method in ("pace", "pace_ctr"):
        _check(len(paces) >= 2 or p.lambda_cls == 0, "pace.paces", "pace prediction needs at least 2 paces")
        if cfg.method == "pace_ctr" and p.ctr_mode == "same_context":
            _check(d.clips_per_video >= 2, "data.clips_per_video", "same_context contrast needs >= 2 clips")
            _check(d.clips_per_video <= len(paces), "data.clips_per_video",
                   f"{d.clips_per_video} clips at distinct paces need as many paces (have {len(paces)})")
        if cfg.method == "pace_ctr":
            _check(p.ctr_mode != "none" or p.lambda_cls > 0, "pace.ctr_mode", "all loss terms are off")
            _check(p.lambda_cls > 0 or p.lambda_ctr > 0, "pace.lambda_cls", "all loss terms are off")
        else:
            _check(p.lambda_cls > 0, "pace.lambda_cls", "method 'pace' needs lambda_cls > 0")

    r = cfg.rspnet
    speeds = parse_fraction_list(r.speeds, "rspnet.speeds")
    if cfg.method == "rspnet":
        _check(len(speeds) >= 2, "rspnet.speeds", "relative speed needs at least 2 speeds")
        _check(r.weight_a >= 0 and r.weight_m >= 0, "rspnet.weight_a", "weights must be >= 0")
        _check(r.weight_a > 0 or r.weight_m > 0, "rspnet.weight_a", "all loss terms are off")
    _check(r.margin >= 0, "rspnet.margin", "must be >= 0")
    _check(0 <= r.momentum < 1, "rspnet.momentum", f"must be in [0, 1), got {r.momentum}")
    _check(r.queue_size >= 1, "rspnet.queue_size", "must be >= 1")
    _check(r.dim >= 1, "rspnet.dim", "must be >= 1")
    _check(1e-3 <= r.tau <= 10, "rspnet.tau", f"must be in [0.001, 10], got {r.tau}")

    _check(o.optimizer in OPTIMIZERS, "optim.optimizer", f"must be one of {OPTIMIZERS}")
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(o.batch_size >= 1, "optim.batch_size", "must be >= 1")
    _check(o.base_batch_size >= 1, "optim.base_batch_size", "must be >= 1")
    _check(o.epochs >= 1, "optim.epochs", "must be >= 1")
    _check(o.lr_step_epochs >= 1, "optim.lr_step_epochs", "must be >= 1")
    _check(0 < o.lr_gamma <= 1, "optim.lr_gamma", "must be in (0, 1]")
    _check(o.max_steps is None or o.max_steps >= 1, "optim.max_steps", "must be >= 1")

    _check(s.min_workers >= 1, "scale.min_workers", "must be >= 1")
    _check(s.max_workers >= s.min_workers, "scale.max_workers", "must be >= scale.min_workers")
    _check(s.cpus_per_worker > 0, "scale.cpus_per_worker", "must be > 0")
    _check(s.max_failures >= -1, "scale.max_failures", "must be >= -1 (-1 = unlimited)")
    _check(s.checkpoint_every >= 1, "scale.checkpoint_every", "must be >= 1")
    _check(s.num_to_keep >= 1, "scale.num_to_keep", "must be >= 1")
    _check(o.batch_size >= s.max_workers, "optim.batch_size",
           f"global batch {o.batch_size} is smaller than scale.max_workers={s.max_workers}")
    px = cfg.proxy
    _check(px.every_epochs >= 1, "proxy.every_epochs", "must be >= 1")
    _check(px.num_clips >= 1, "proxy.num_clips", "must be >= 1")
    _check(px.layer in ("p4", "p5"), "proxy.layer", f"must be 'p4' or 'p5', got {px.layer!r}")
    _check(px.max_videos is None or px.max_videos >= 1, "proxy.max_videos", "must be >= 1")
    _check(bool(cfg.run.name) and "/" not in cfg.run.name, "run.name", "must be a non-empty name without '/'")
    _check(cfg.run.fail_mode in ("raise", "exit"), "run.fail_mode", "must be 'raise' or 'exit'")
