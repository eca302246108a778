"""Pre-training as a `Task`: pace clips -> fused augmentation on the model's device -> the objective."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vpace.config import Config, ConfigError
from vpace.train.task import Task


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
    frames' device (the fused op: Triton on GPU, fused torch on CPU)."""
    from vpace.augment import augment, sample_params

    n, _, h, w, _ = frames.shape
    params = sample_params(n, index_map.shape[1], h, w, cfg.augment, generator=generator)
    return augment(frames, index_map, params, cfg.augment.mean, cfg.augment.std, out_dtype=torch.float32)


class PretrainTask(Task):
    """Self-supervised pre-training with `cfg.method` (pace | pace_ctr | rspnet).

    A step reads loop -> task -> model + loss: augment the clips, `self.model(clips)` (the DDP wrapper of
    `self.net`), the method's loss, plus per-pace wrap / accuracy tallies (`pace_tallies`)."""

    name = "pretrain"

    def check(self, cfg: Config) -> None:
        load_split(cfg)  # the data index exists and has the split: fail before Ray starts

    def setup(self, cfg: Config, device: torch.device) -> nn.Module:
        from vpace.data import parse_pace_set
        from vpace.models import build_backbone
        from vpace.objectives import build_objective

        self.cfg = cfg
        self.paces = parse_pace_set(cfg.rspnet.speeds if cfg.method == "rspnet" else cfg.pace.paces)
        backbone = build_backbone(cfg.model.backbone, weights_path=cfg.model.weights)
        self.net, self.loss = build_objective(cfg, backbone)
        self.net.to(device)
        if cfg.model.channels_last:
            self.net.to(memory_format=torch.channels_last_3d)
        self.model: nn.Module = self.net.train()  # until `wrap` hands over the DDP wrapper
        return self.net

    def dataset(self, cfg: Config) -> Dataset:
        split = load_split(cfg)
        d = cfg.data
        kw = dict(clip_len=d.clip_len, height=d.height, width=d.width, seed=cfg.run.seed, start=d.start,
                  epoch_size=d.epoch_size, decode_threads=d.decode_threads, cache_dir=d.cache_dir)
        if cfg.method == "rspnet":
            from vpace.data.rsp import RSPClipDataset

            return RSPClipDataset(split, speeds=cfg.rspnet.speeds, **kw)
        from vpace.data import PaceClipDataset

        return PaceClipDataset(split, pace_set=cfg.pace.paces, clips_per_video=d.clips_per_video, **kw)

    @staticmethod
    def collate(items: list[Any]) -> dict[str, Any]:
        from vpace.data import collate_clips

        return collate_clips(items)

    def batch_size(self, batch: dict[str, Any]) -> tuple[int, int]:
        if "frames" not in batch:
            return 0, 0
        b, n = batch["frames"].shape[:2]
        return int(b), int(b * n)

    def step(self, batch: dict[str, Any], generator: torch.Generator
             ) -> tuple[Tensor, dict[str, float | Tensor]]:
        from vpace.objectives import pace_tallies

        frames, index_map = batch["frames"], batch["index_map"]  # [B, n, T, H, W, 3], [B, n, T]
        b, n = frames.shape[:2]
        clips = augment_batch(frames.flatten(0, 1), index_map.flatten(0, 1), self.cfg, generator)
        if self.cfg.model.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        meta = {"pace_label": batch["pace_label"].reshape(b * n),
                "video_id": batch["video_id"].repeat_interleave(n)}
        out = self.model(clips)
        loss, metrics = self.loss(out, meta)
        wrapped = batch["wrapped"].reshape(b * n)
        tallies = pace_tallies(meta["pace_label"], wrapped, self.paces, out.get("logits"))
        return loss, {**metrics, **tallies}  # the exact pace_acc ratio replaces the loss's per-step mean

    def after_optimizer_step(self) -> None:
        self.net.after_optimizer_step()

    def state_root(self) -> nn.Module:
        return self.net
