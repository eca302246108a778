"""Action recognition on top of a pre-trained backbone (pace paper §4.1).

``finetune``: conv weights from the pre-trained checkpoint (or a backbone file, or random init for the
baseline), a new fc, cross-entropy, lr 3e-3 (0.01 for S3D-G), the pre-training augmentation and schedule.
It is a `vpace.train.TrainSpec` (`finetune_spec`) on the shared Ray Train loop, so checkpoints, elasticity
and fault tolerance are the pre-training ones. Test: 10 uniformly spaced clips per video, center crop, softmax
averaged -> video accuracy (and clip accuracy). The cheap alternatives on frozen features (``linear_probe``,
``knn_classify``) are in `vpace.eval.probes`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from vpace.bars import progress_bar
from vpace.config import Config, base_backbone, load_config, stored_config
from vpace.data import PaceClipDataset, VideoIndex, load_index
from vpace.errors import UserError
from vpace.eval.features import ClipSpec, center_clips, clip_batches, skipped_videos
from vpace.eval.loading import eval_dir, load_model
from vpace.eval.metrics import clip_and_video_accuracy
from vpace.eval.results import TITLES, markdown_table, pct, write_result
from vpace.objectives import Metrics, per_step
from vpace.train.checkpoint import find_latest, load_latest
from vpace.train.pretraining import augment_batch, load_split
from vpace.train.spec import TrainSpec

FINETUNE_LR = {"s3d_g": 0.01, "tv_s3d": 0.01}  # paper §4.1; 3e-3 for every other backbone
DEFAULT_LR = 3e-3


class Classifier(nn.Module):
    """Backbone + a new fc: the fine-tuning model (dropout before the fc, as in VCOP's fine-tuning)."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.backbone(x)))


def classifier(cfg: Config, *, source: str | None, num_classes: int, dropout: float) -> Classifier:
    """The backbone of `source` (a run, checkpoint or weights file; None: random init) + a new fc."""
    bb = load_model(source, backbone=cfg.model.backbone, seed=cfg.run.seed).backbone
    return Classifier(bb, num_classes, dropout)


def finetune_dataset(cfg: Config) -> Dataset:
    """One pace-1 clip per video at a uniform random start (temporal jittering); labels = action classes."""
    d = cfg.data
    return PaceClipDataset(load_split(cfg), pace_set=(1,), clip_len=d.clip_len, clips_per_video=1,
                           height=d.height, width=d.width, seed=cfg.run.seed, epoch_size=d.epoch_size,
                           decode_threads=d.decode_threads, cache_dir=d.cache_dir)


def finetune_loss(model: nn.Module, batch: dict[str, Any], generator: torch.Generator, cfg: Config
                  ) -> tuple[Tensor, Metrics]:
    """Cross-entropy of the augmented clips; `acc` = correct clips / clips."""
    frames, index_map = batch["frames"], batch["index_map"]  # [B, n, T, H, W, 3], [B, n, T]
    n = frames.shape[1]
    clips = augment_batch(frames.flatten(0, 1), index_map.flatten(0, 1), cfg, generator)
    y = batch["label"].repeat_interleave(n)
    logits = model(clips).float()
    loss = F.cross_entropy(logits, y)
    hits = (logits.detach().argmax(1) == y).sum().to(torch.float64)
    return loss, {**per_step({"loss": loss}), "acc": (hits, torch.full_like(hits, y.numel()))}


def _check_finetune(cfg: Config, *, source: str | None) -> None:
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"finetune: checkpoint not found: {source}")
    load_split(cfg)


def finetune_spec(source: str | None, num_classes: int, dropout: float = 0.5) -> TrainSpec:
    """Fine-tuning of `source`'s backbone (None: random init) with a `num_classes`-way fc."""
    source = str(Path(source).resolve()) if source else None
    return TrainSpec(name="finetune", dataset=finetune_dataset, forward_loss=finetune_loss,
                     build_model=partial(classifier, source=source, num_classes=int(num_classes),
                                         dropout=float(dropout)),
                     check=partial(_check_finetune, source=source))


def load_classifier(run_or_ckpt: str | Path) -> tuple[Classifier, Config]:
    """The fine-tuned Classifier of a finetune run's latest checkpoint (weights_only)."""
    _, state, _ = load_latest(run_or_ckpt)
    cfg = stored_config(state["config"])
    from vpace.models import build_backbone

    fc_w = state["model"]["fc.weight"]
    model = Classifier(build_backbone(cfg.model.backbone), fc_w.shape[0])
    model.load_state_dict(state["model"])
    return model.eval(), cfg


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, index: VideoIndex, spec: ClipSpec, *, batch_size: int = 4, num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """§4.1 test: softmax of each of the 10 center-cropped clips, averaged per video -> video/clip accuracy.
    Unreadable videos are skipped and listed."""
    probs, labels, ids = [], [], []
    for batch in progress_bar(clip_batches(index, spec, batch_size=batch_size, num_workers=num_workers),
                              desc="test", unit="batch", enabled=progress):
        if "video_id" not in batch:
            continue
        b, c = batch["frames"].shape[:2]
        logits = model(center_clips(batch["frames"], batch["index_map"], spec)).float()
        probs.append(torch.softmax(logits, 1).reshape(b, c, -1))
        labels.append(batch["label"])
        ids += batch["video_id"].tolist()
    skipped = skipped_videos(index, ids)
    if not probs:
        raise UserError(f"test split: none of the {len(index)} videos could be read")
    out = clip_and_video_accuracy(torch.cat(probs), torch.cat(labels))
    return {**out, "skipped": skipped}


def finetune_config(
    source: str | None, *, init: str | None, backbone: str | None, data: str | None, storage: str,
    lr: float | None, epochs: int | None, overrides: Sequence[str], split_id: int | None = None,
) -> Config:
    """The pre-training run's config (same augmentation + schedule) with the fine-tune lr of §4.1.

    ``source`` supplies the config, ``init`` the weights (None = random init). The run is named after a hash
    of the config and the initial weights: re-running the same fine-tune resumes (or returns at once), while
    any change of settings or checkpoint starts a fresh run next to the old ones."""
    base: dict[str, Any] = {}
    if source is not None:
        m = load_model(source, backbone=backbone)
        base = m.config.to_dict() if m.config is not None else {"model": {"backbone": m.backbone_name}}
    elif backbone is not None:
        base = {"model": {"backbone": backbone}}
    cfg = load_config(data=base)
    bb = cfg.model.backbone
    patch: dict[str, Any] = {"model": {"weights": None}, "data": {"split": "train"},
                             "optim": {"lr": lr or FINETUNE_LR.get(base_backbone(bb), DEFAULT_LR)},
                             "run": {"name": "finetune", "storage": storage}}
    if data:
        patch["data"]["index"] = data
    if split_id is not None:
        patch["data"]["split_id"] = split_id
    if epochs:
        patch["optim"]["epochs"] = epochs
        patch["optim"]["lr_step_epochs"] = min(cfg.optim.lr_step_epochs, epochs)
    cfg = load_config(data={**base, **{k: {**base.get(k, {}), **v} for k, v in patch.items()}},
                      overrides=list(overrides))
    weights = load_model(init, backbone=bb).digest if init else f"random-{bb}-seed{cfg.run.seed}"
    key = hashlib.sha256(f"{cfg.to_yaml()}|{weights}".encode()).hexdigest()[:8]
    cfg.run.name = f"finetune-{'pretrained' if init else 'random'}-{key}"
    return cfg


def finetune(
    checkpoint: str | None,
    *,
    data: str | None = None,
    split_id: int | None = None,
    backbone: str | None = None,
    lr: float | None = None,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    baseline: str | None = None,
    out_dir: str | None = None,
    address: str | None = None,
    dropout: float = 0.5,
    test_batch_size: int = 4,
    num_workers: int = 0,
) -> dict[str, Any]:
    """``vpace finetune``: fine-tune on Ray Train, test on the test split; ``baseline="random"`` also trains
    the same recipe from random init. Writes ``<out>/finetune.{json,md}`` and returns the JSON.

    Runs live in ``<out>/finetune-<model>-<hash of settings + weights>`` (see ``finetune_config``)."""
    from vpace.train import run_task

    if baseline not in (None, "random"):
        raise ValueError(f"baseline must be None or 'random', got {baseline!r}")
    out = eval_dir(checkpoint, out_dir).resolve()
    sources = {"pretrained": checkpoint} if checkpoint else {}
    if baseline == "random" or checkpoint is None:
        sources["random"] = None
    rows: list[dict[str, Any]] = []
    for label, src in sources.items():
        cfg = finetune_config(checkpoint, init=src, backbone=backbone, data=data, storage=str(out), lr=lr,
                              epochs=epochs, overrides=overrides, split_id=split_id)
        index = load_index(cfg.data.index, split_id=cfg.data.split_id)
        result = run_task(finetune_spec(src, len(index.classes), dropout), cfg, address)
        model, _ = load_classifier(result.run_dir)
        spec = ClipSpec.from_config(cfg)
        test = evaluate_classifier(model, index.split("test"), spec, batch_size=test_batch_size,
                               num_workers=num_workers)
        last = result.history.get("epochs", [{}])[-1] if result.history.get("epochs") else {}
        rows.append({"model": label, "init": str(src) if src else "random", "backbone": cfg.model.backbone,
                     "lr": cfg.optim.lr, "epochs": cfg.optim.epochs, "steps": result.metrics.get("step"),
                     "train_acc": last.get("acc"), "run_dir": result.run_dir,
                     "checkpoint": str(find_latest(result.run_dir)), **test})
    res = {"protocol": "10 clips uniformly spaced, center crop, softmax averaged per video", "rows": rows}
    cols = ("video_acc", "clip_acc", "train_acc")
    table = markdown_table(["model", *cols], [[r["model"], *[pct(r.get(c)) for c in cols]] for r in rows])
    write_result(out, "finetune", TITLES["finetune"], res, table, rows[0]["skipped"])
    return res

