"""Semantic checks of a loaded `Config` that types alone cannot express; every error names the dotted field.

The allowed values of each choice field are stated here once (`METHODS`, `LOADERS`, ...); the modules that act
on a choice import the list from here.
"""

from __future__ import annotations

from fractions import Fraction

from vpace.config.backbones import unknown_backbone
from vpace.config.paces import parse_pace_set
from vpace.config.schema import AugmentConfig, Config
from vpace.errors import UserError
from vpace_kernels.limits import TAU_RANGE

METHODS = ("pace", "pace_ctr", "rspnet")
CTR_MODES = ("none", "same_context", "same_pace")
PROJ_HEADS = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adamw")
# where a training clip may start (rule: vpace.data.pace.start_candidates): `fit` only where the clip fits in
# the video, looping only when the video is shorter than the clip (paper §3.1); `wrap` anywhere (official
# code)
START_POLICIES = ("fit", "wrap")
LOADERS = ("torch", "ray_data")  # where clips are decoded (vpace.train.data_source)


class ConfigError(UserError):
    """A config value is invalid; the message starts with the dotted field name."""

    def __init__(self, field_name: str, msg: str) -> None:
        super().__init__(f"config field '{field_name}': {msg}")
        self.field_name = field_name


def pace_set_field(text: str, name: str) -> tuple[Fraction, ...]:
    """`parse_pace_set` of a config field: its error names the field."""
    try:
        return parse_pace_set(text)
    except ValueError as e:
        raise ConfigError(name, str(e)) from None


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(name, msg)


def augment_problem(a: AugmentConfig, height: int, width: int) -> tuple[str, str] | None:
    """The first out-of-range field of `AugmentConfig` ``a`` for ``height x width`` frames and why, or None.

    The one home of these ranges (torchvision's RandomCrop / ColorJitter / RandomApply): config validation
    reports them as ``augment.<field>`` before Ray starts, `vpace.augment` as ``<field>`` on direct calls.
    """
    if a.crop < 1:
        return "crop", f"must be >= 1, got {a.crop}"
    if a.crop > min(height, width):
        return "crop", f"{a.crop}x{a.crop} is larger than the frames {height}x{width}"
    for f in ("flip_p", "jitter_p"):
        if not 0.0 <= getattr(a, f) <= 1.0:
            return f, f"is a probability, got {getattr(a, f)}"
    for f in ("brightness", "contrast", "saturation"):
        if getattr(a, f) < 0:
            return f, f"must be >= 0, got {getattr(a, f)}"
    if not 0 <= a.hue <= 0.5:
        return "hue", f"must be in [0, 0.5], got {a.hue}"
    return None


def validate(cfg: Config) -> None:
    """Raise `ConfigError` (naming the field) at the first value out of range or inconsistent with another."""
    _check(cfg.method in METHODS, "method", f"must be one of {METHODS}, got {cfg.method!r}")
    d, a, o, s = cfg.data, cfg.augment, cfg.optim, cfg.scale
    _check(bool(d.index), "data.index", "must name a data folder, split dir, CSV or index JSON")
    _check(d.clip_len >= 1, "data.clip_len", f"must be >= 1, got {d.clip_len}")
    _check(d.height >= 1 and d.width >= 1, "data.height", "decode size must be positive")
    _check(d.clips_per_video >= 1, "data.clips_per_video", "must be >= 1")
    _check(d.epoch_size is None or d.epoch_size >= 1, "data.epoch_size", "must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.loader in LOADERS, "data.loader", f"must be one of {LOADERS}, got {d.loader!r}")
    _check(all(v > 0 for v in d.decode_resources.values()), "data.decode_resources",
           f"amounts must be > 0, got {d.decode_resources}")
    _check(d.decode_concurrency is None or d.decode_concurrency >= 1, "data.decode_concurrency",
           "must be >= 1")
    _check(d.prefetch_batches >= 0, "data.prefetch_batches", "must be >= 0")
    _check(d.object_store_memory is None or d.object_store_memory >= 1, "data.object_store_memory",
           "must be >= 1 (bytes)")
    _check(d.decode_threads >= 0, "data.decode_threads", "must be >= 0")
    _check(d.start in START_POLICIES, "data.start", f"must be one of {START_POLICIES}, got {d.start!r}")
    if (problem := augment_problem(a, d.height, d.width)) is not None:
        raise ConfigError(f"augment.{problem[0]}", problem[1])
    _check(all(v > 0 for v in a.std), "augment.std", "must be > 0")
    problem = unknown_backbone(cfg.model.backbone)
    _check(problem is None, "model.backbone", str(problem))

    p = cfg.pace
    paces = pace_set_field(p.paces, "pace.paces")
    _check(p.lambda_cls >= 0, "pace.lambda_cls", f"must be >= 0, got {p.lambda_cls}")
    _check(p.lambda_ctr >= 0, "pace.lambda_ctr", f"must be >= 0, got {p.lambda_ctr}")
    _check(p.ctr_mode in CTR_MODES, "pace.ctr_mode", f"must be one of {CTR_MODES}, got {p.ctr_mode!r}")
    _check(p.proj_head in PROJ_HEADS, "pace.proj_head", f"must be one of {PROJ_HEADS}")
    _check(p.proj_dim >= 1, "pace.proj_dim", "must be >= 1")
    _check(TAU_RANGE[0] <= p.tau <= TAU_RANGE[1], "pace.tau", f"must be in {list(TAU_RANGE)}, got {p.tau}")
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
    speeds = pace_set_field(r.speeds, "rspnet.speeds")
    if cfg.method == "rspnet":
        _check(len(speeds) >= 2, "rspnet.speeds", "relative speed needs at least 2 speeds")
        _check(r.weight_a >= 0 and r.weight_m >= 0, "rspnet.weight_a", "weights must be >= 0")
        _check(r.weight_a > 0 or r.weight_m > 0, "rspnet.weight_a", "all loss terms are off")
    _check(r.margin >= 0, "rspnet.margin", "must be >= 0")
    _check(0 <= r.momentum < 1, "rspnet.momentum", f"must be in [0, 1), got {r.momentum}")
    _check(r.queue_size >= 1, "rspnet.queue_size", "must be >= 1")
    _check(r.dim >= 1, "rspnet.dim", "must be >= 1")
    _check(TAU_RANGE[0] <= r.tau <= TAU_RANGE[1], "rspnet.tau", f"must be in {list(TAU_RANGE)}, got {r.tau}")

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
    _check(all(v > 0 for v in s.worker_resources.values()) and not {"CPU", "GPU"} & set(s.worker_resources),
           "scale.worker_resources", "custom resources with amounts > 0 (CPU and GPU have their own "
           f"fields), got {s.worker_resources}")
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
