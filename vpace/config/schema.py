"""The run configuration's schema: a tree of dataclasses, one per section, each field with a type and default.

Why dataclasses and not a dict: every field has a type and a default that docs and `--set` overrides can
name, and a bad value fails *before* Ray starts, with a message naming the dotted field (``pace.paces``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

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
    loader: str = "torch"  # torch: DataLoader processes on the worker's node; ray_data: Ray Data tasks
    num_workers: int = 2  # DataLoader worker processes per training worker (loader: torch)
    decode_resources: dict[str, float] = field(default_factory=dict)  # ray_data: e.g. {decode: 1} per task
    decode_concurrency: int | None = None  # ray_data: max decode tasks in flight per worker (None: Ray's)
    prefetch_batches: int = 2  # batches decoded ahead of the step (both loaders)
    object_store_memory: int | None = None  # ray_data: bytes of decoded frames in flight (None: Ray's)
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
    worker_resources: dict[str, float] = field(default_factory=dict)  # more per worker, e.g. {trainer: 1}
    max_failures: int = 3
    checkpoint_every: int = 500  # steps; a checkpoint is also written at each epoch end
    num_to_keep: int = 2


@dataclass
class RunConfig:
    name: str = "pretrain"
    storage: str = "runs"
    seed: int = 0


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


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj
