"""Batched feature extraction for the evaluation protocols, with an on-disk cache.

Protocol (VCOP/VCP/pace §4.4): 10 clips of 16 frames uniformly spaced over each video, pace 1, center crop;
the backbone's p4 / p5 pooled vectors per clip. Extraction is the slow part of retrieval, kNN and the linear
probe, so per-clip features are cached under ``cache_dir`` keyed by (checkpoint digest, data-index digest,
layer, sampling mode); video-level features are the mean over clips and cost nothing to derive.
Unreadable videos are skipped, counted and listed with the reason (never fatal, never silent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch.utils.data import DataLoader

from vpace.bars import progress_bar
from vpace.config import AugmentConfig, Config, DataConfig
from vpace.data import BrokenVideoError, EvalClipDataset, VideoIndex, VideoReader, collate_clips, load_index
from vpace.data.pace import sample_indices
from vpace.errors import UserError
from vpace.eval.loading import LoadedModel, load_model

log = logging.getLogger(__name__)

LAYERS = ("p4", "p5")
DEFAULT_CACHE = "runs/cache/features"  # content-keyed, so one cache serves every run
CACHE_VERSION = 1


@dataclass
class ClipSpec:
    """How evaluation clips are cut and normalized (the cache key's 'mode' part); defaults = the paper's."""

    num_clips: int = 10
    clip_len: int = DataConfig.clip_len
    height: int = DataConfig.height
    width: int = DataConfig.width
    crop: int = AugmentConfig.crop
    mean: tuple[float, float, float] = AugmentConfig.mean
    std: tuple[float, float, float] = AugmentConfig.std

    @classmethod
    def from_config(cls, cfg: Config | None, **overrides: object) -> ClipSpec:
        """The run's clip length, decode size, crop and normalization; None overrides are ignored."""
        spec = cls()
        if cfg is not None:
            spec = cls(clip_len=cfg.data.clip_len, height=cfg.data.height, width=cfg.data.width,
                       crop=cfg.augment.crop, mean=tuple(cfg.augment.mean), std=tuple(cfg.augment.std))
        for k, v in overrides.items():
            if v is not None:
                setattr(spec, k, v)
        return spec

    def mode(self) -> str:
        return (f"{self.num_clips}x{self.clip_len}@{self.height}x{self.width}-center{self.crop}"
                f"-m{','.join(f'{v:g}' for v in self.mean)}-s{','.join(f'{v:g}' for v in self.std)}")


@dataclass
class FeatureSet:
    """Per-clip features of one split and one layer."""

    feats: np.ndarray  # float32 [N, num_clips, D]
    labels: np.ndarray  # int64 [N]
    video_ids: np.ndarray  # int64 [N], position in the split's VideoIndex
    layer: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def video_level(self) -> tuple[np.ndarray, np.ndarray]:
        """[N, D] mean over clips (the protocol's default), labels [N]."""
        return self.feats.mean(axis=1), self.labels

    def clip_level(self) -> tuple[np.ndarray, np.ndarray]:
        """[N * clips, D] every clip on its own, labels repeated per clip."""
        n, c, d = self.feats.shape
        return self.feats.reshape(n * c, d), np.repeat(self.labels, c)


def index_digest(index: VideoIndex) -> str:
    """Content key of a split: paths, labels, splits, each file's size + mtime (an edited file misses)."""
    h = hashlib.sha256()
    for e in index.entries:
        try:
            st = os.stat(e.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{e.path}\t{e.label}\t{e.split}\t{stamp}\n".encode())
    return h.hexdigest()[:16]


def cache_path(cache_dir: str | Path, model_digest: str, data_digest: str, layer: str, spec: ClipSpec
               ) -> Path:
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, model_digest, data_digest, layer, spec.mode()]).encode()
    ).hexdigest()[:20]
    return Path(cache_dir) / f"{layer}-{key}.safetensors"


def _save(path: Path, fs: FeatureSet, meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"feats": np.ascontiguousarray(fs.feats), "labels": fs.labels, "video_ids": fs.video_ids},
              str(tmp), metadata={**meta, "layer": fs.layer, "skipped": json.dumps(fs.skipped)})
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache entry


def _load(path: Path, layer: str) -> FeatureSet:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
    t = load_file(str(path))
    return FeatureSet(t["feats"], t["labels"], t["video_ids"], layer, json.loads(meta.get("skipped", "[]")))


def _probe_reason(path: str) -> str:
    """Why a video the data set dropped is unreadable (only called for the few skipped ones)."""
    try:
        VideoReader(path).get_frames(np.zeros(1, dtype=np.int64))
    except BrokenVideoError as e:
        return e.reason
    return "dropped by the data set (re-opening it worked; see the data loader's log)"


def skipped_videos(index: VideoIndex, seen_ids: np.ndarray | list[int]) -> list[dict[str, str]]:
    """{"path", "reason"} of every video of ``index`` the data loader dropped (logged once here)."""
    seen = set(np.asarray(seen_ids).tolist())
    skipped = [{"path": e.path, "reason": _probe_reason(e.path)}
               for i, e in enumerate(index.entries) if i not in seen]
    for s in skipped:
        log.warning("skipped unreadable video %s: %s", s["path"], s["reason"])
    return skipped


def clip_batches(
    index: VideoIndex, spec: ClipSpec, *, batch_size: int, num_workers: int
) -> DataLoader:
    """DataLoader over the split yielding the collated 10-clip items (broken videos already dropped)."""
    ds = EvalClipDataset(index, num_clips=spec.num_clips, clip_len=spec.clip_len, height=spec.height,
                         width=spec.width)
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips,
                      persistent_workers=False)


def center_clips(frames: torch.Tensor, index_map: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """Clips as the data sets give them (unique frames uint8 [..., F, H, W, 3] + index map [..., T]) ->
    normalized center crops [N, 3, T, crop, crop], N = product of the leading dims (the eval transform).

    The augmentation op itself (``vpace.augment.augment``) with ``center_params``: without jitter its CPU
    kernel is one gather + crop + normalize pass, built once per machine and never per shape (measured 3-15x
    faster than the plain torch gather + slice + normalize this used to be)."""
    from vpace.augment import augment, center_params

    f, h, w = frames.shape[-4:-1]
    frames, index_map = frames.reshape(-1, f, h, w, 3), index_map.reshape(-1, index_map.shape[-1])
    params = center_params(frames.shape[0], index_map.shape[1], h, w, crop=spec.crop)
    backend = None if frames.is_cuda else "cpu"  # not Triton's interpreter on CPU, even if TRITON_INTERPRET
    return augment(frames, index_map, params, spec.mean, spec.std, backend=backend)


def load_pace_clips(
    reader: VideoReader, paces: Sequence[Fraction], clip_len: int, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip per pace from the same start frame -> frames uint8 [P, T, H, W, 3] (unique frames, zero
    padded to T) and index_map [P, T], the dataset layout the augment op takes."""
    frames, maps = [], []
    for p in paces:
        fr, imap = reader.get_frames(sample_indices(reader.num_frames, clip_len, p, start))
        pad = np.zeros((clip_len, *fr.shape[1:]), np.uint8)
        pad[: len(fr)] = fr
        frames.append(pad)
        maps.append(imap)
    return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(maps))


@torch.no_grad()
def extract_features(
    model: LoadedModel,
    index: VideoIndex,
    *,
    layers: Sequence[str] = ("p5",),
    spec: ClipSpec | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, FeatureSet]:
    """Per-clip features of every readable video in ``index`` per layer (cached when cache_dir is set)."""
    spec = spec or ClipSpec.from_config(model.config)
    bad = [x for x in layers if x not in LAYERS]
    if bad:
        raise UserError(f"unknown feature layer(s) {bad}; valid: {LAYERS}")
    data_digest = index_digest(index)
    out: dict[str, FeatureSet] = {}
    if cache_dir is not None:
        for layer in layers:
            p = cache_path(cache_dir, model.digest, data_digest, layer, spec)
            if p.is_file():
                out[layer] = _load(p, layer)
                log.info("features %s %s: cache hit %s", desc, layer, p)
    todo = [x for x in layers if x not in out]
    if not todo:
        return out

    net = model.backbone.eval()
    feats: dict[str, list[np.ndarray]] = {x: [] for x in todo}
    labels, ids = [], []
    loader = clip_batches(index, spec, batch_size=batch_size, num_workers=num_workers)
    for batch in progress_bar(loader, desc=desc, unit="batch", enabled=progress):
        if "video_id" not in batch:  # every video of this batch was unreadable
            continue
        b, c = batch["frames"].shape[:2]
        ff = net.forward_features(center_clips(batch["frames"], batch["index_map"], spec))
        for layer in todo:
            feats[layer].append(ff[layer].float().reshape(b, c, -1).numpy())
        labels.append(batch["label"].numpy())
        ids.append(batch["video_id"].numpy())
    video_ids = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
    skipped = skipped_videos(index, video_ids)
    for layer in todo:
        arr = np.concatenate(feats[layer]) if feats[layer] else np.zeros((0, spec.num_clips, 0), np.float32)
        fs = FeatureSet(arr.astype(np.float32), np.concatenate(labels).astype(np.int64) if labels
                        else np.zeros(0, np.int64), video_ids, layer, skipped)
        if cache_dir is not None:
            _save(cache_path(cache_dir, model.digest, data_digest, layer, spec), fs,
                  {"model": model.digest, "data": data_digest, "mode": spec.mode()})
        out[layer] = fs
    return {x: out[x] for x in layers}


@dataclass
class EvalSetup:
    """What every feature-based protocol needs: the models to compare, the two splits and the clip spec."""

    models: dict[str, LoadedModel]  # "pretrained" and/or "random"
    train: VideoIndex
    test: VideoIndex
    spec: ClipSpec
    data: str


def setup_eval(
    checkpoint: str | None,
    *,
    backbone: str | None = None,
    baseline: str | None = None,
    seed: int = 0,
    data: str | None = None,
    split_id: int = 1,
    num_clips: int = 10,
) -> EvalSetup:
    """Load the checkpoint (and a random init of the same backbone when ``baseline="random"`` or no
    checkpoint), the train/test splits (default: the run's data) and the clip spec (the run's sizes)."""
    if baseline not in (None, "random"):
        raise ValueError(f"baseline must be None or 'random', got {baseline!r}")
    models: dict[str, LoadedModel] = {}
    if checkpoint is not None:
        models["pretrained"] = load_model(checkpoint, backbone=backbone)
    if checkpoint is None or baseline == "random":
        name = backbone or (models["pretrained"].backbone_name if models else None)
        models["random"] = load_model(None, backbone=name, seed=seed)
    first = next(iter(models.values()))
    data = data or (first.config.data.index if first.config else None)
    if data is None:
        raise UserError("no data: pass data=<index spec> (the checkpoint carries no run config)")
    index = load_index(data, split_id=split_id)
    spec = ClipSpec.from_config(first.config, num_clips=num_clips)
    return EvalSetup(models, index.split("train"), index.split("test"), spec, str(data))
