"""Pre-training as a `TrainSpec`: pace clips -> fused augmentation on the model's device -> the objective.

A step reads as moco's loop: augment the clips, `model(clips)` (backbone + heads, and for RSPNet the momentum
encoder + queue), the method's loss outside the model, plus per-pace wrap / accuracy tallies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vpace.config import Config, ConfigError
from vpace.objectives import Metrics
from vpace.train.spec import TrainSpec


def load_split(cfg: Config):
    """The configured split of the data index; errors name `data.index` / `data.split`."""
    from vpace.data import load_index

    try:
        index = load_index(cfg.data.index, split_id=cfg.data.split_id)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("data.index", str(e)) from None
    try:
        return index.split(cfg.data.split)
    except ValueError as e:
        raise ConfigError("data.split", str(e)) from None


def augment_batch(frames: Tensor, index_map: Tensor, cfg: Config, generator: torch.Generator) -> Tensor:
    """uint8 [N, T, H, W, 3] unique frames + [N, T] maps -> normalised jittered clips [N, 3, T, c, c], on the
    frames' device (the fused op: Triton on GPU, the C kernel on CPU); the draw is made on the CPU."""
    from vpace.augment import augment, sample_params

    n, _, h, w, _ = frames.shape
    params = sample_params(n, index_map.shape[1], h, w, cfg.augment, generator=generator)
    clips = augment(frames, index_map, params, cfg.augment.mean, cfg.augment.std, out_dtype=torch.float32)
    return clips.contiguous(memory_format=torch.channels_last_3d) if cfg.model.channels_last else clips


def pretrain_model(cfg: Config) -> nn.Module:
    """The method's model around a fresh (or `model.weights`) backbone."""
    from vpace.models import build_backbone
    from vpace.objectives import build_objective

    model, _ = build_objective(cfg, build_backbone(cfg.model.backbone, weights_path=cfg.model.weights))
    return model.to(memory_format=torch.channels_last_3d) if cfg.model.channels_last else model


def pretrain_dataset(cfg: Config) -> Dataset:
    d = cfg.data
    kw = dict(clip_len=d.clip_len, height=d.height, width=d.width, seed=cfg.run.seed, start=d.start,
              epoch_size=d.epoch_size, decode_threads=d.decode_threads, cache_dir=d.cache_dir)
    if cfg.method == "rspnet":
        from vpace.data.rsp import RSPClipDataset

        return RSPClipDataset(load_split(cfg), speeds=cfg.rspnet.speeds, **kw)
    from vpace.data import PaceClipDataset

    return PaceClipDataset(load_split(cfg), pace_set=cfg.pace.paces, clips_per_video=d.clips_per_video, **kw)


def pretrain_loss(model: nn.Module, batch: dict[str, Any], generator: torch.Generator, cfg: Config
                  ) -> tuple[Tensor, Metrics]:
    """Augment, forward, the method's loss and the per-pace tallies of one batch."""
    from vpace.data import parse_pace_set
    from vpace.objectives import build_loss, pace_tallies

    frames, index_map = batch["frames"], batch["index_map"]  # [B, n, T, H, W, 3], [B, n, T]
    b, n = frames.shape[:2]
    clips = augment_batch(frames.flatten(0, 1), index_map.flatten(0, 1), cfg, generator)
    meta = {"pace_label": batch["pace_label"].reshape(b * n),
            "video_id": batch["video_id"].repeat_interleave(n)}
    out = model(clips)
    loss, metrics = build_loss(cfg)(out, meta)
    paces = parse_pace_set(cfg.rspnet.speeds if cfg.method == "rspnet" else cfg.pace.paces)
    return loss, {**metrics, **pace_tallies(meta["pace_label"], batch["wrapped"].reshape(b * n), paces,
                                            out.get("logits"))}


def check_pretrain(cfg: Config) -> None:
    from vpace.data.decode_cost import advise_prepare

    advise_prepare(load_split(cfg), cfg.data)  # the index loads (before Ray starts); would `prepare` pay off


PRETRAIN = TrainSpec(name="pretrain", build_model=pretrain_model, dataset=pretrain_dataset,
                     forward_loss=pretrain_loss, check=check_pretrain)
