"""The search objective: kNN retrieval of the *current* backbone on a labeled split, measured during training.

Why not the pretext loss: pace sets of different sizes are different classification problems, so their losses
and accuracies do not compare; the paper picks pace ranges by downstream accuracy (Table 1). Retrieval top-1
(test videos query the train split by cosine similarity, `vpace.eval`'s protocol with fewer clips) needs no
training and ranks representations cheaply, so it can run every `proxy.every_epochs` epochs.

`ProxyPretrainTask` is pre-training plus that measurement: the training loop calls `epoch_metrics` on rank 0
at each epoch end, and what it returns is reported with that epoch's checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from vpace.config import Config, ConfigError
from vpace.train.pretrain_task import PretrainTask

log = logging.getLogger(__name__)


def proxy_splits(cfg: Config):
    """(gallery, queries) VideoIndex of `cfg.proxy`, capped at `max_videos` each by an even stride (keeps
    the class mix of a class-sorted list); errors name the proxy field."""
    from vpace.data import load_index

    px = cfg.proxy
    if px.index is None:
        raise ConfigError("proxy.index", "a search needs labeled data for its objective")
    try:
        index = load_index(px.index, split_id=cfg.data.split_id)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("proxy.index", str(e)) from None
    out = []
    for field, split in (("train_split", px.train_split), ("test_split", px.test_split)):
        try:
            ix = index.split(split)
        except ValueError as e:
            raise ConfigError(f"proxy.{field}", str(e)) from None
        if any(e.label < 0 for e in ix.entries):
            raise ConfigError("proxy.index", f"split {split!r} of {px.index} has unlabeled videos; the proxy "
                              "needs class labels")
        if px.max_videos is not None and len(ix) > px.max_videos:
            keep = np.unique(np.linspace(0, len(ix) - 1, px.max_videos).round().astype(int))
            ix.entries = [ix.entries[i] for i in keep]
        out.append(ix)
    return out[0], out[1]


def mean_average_precision(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                           gallery_labels: np.ndarray) -> float:
    """Retrieval mAP: per query, the mean of precision@rank over the ranks of its class's gallery items
    (cosine ranking, ties by gallery order). Uses the whole ranking, so unlike top-1 over a few dozen queries
    it rarely ties - what a scheduler comparing trials needs."""
    from vpace.eval.metrics import cosine_topk

    _, idx = cosine_topk(query, gallery, len(gallery))
    gl, ql = torch.as_tensor(np.asarray(gallery_labels)), torch.as_tensor(np.asarray(query_labels))
    rel = gl[idx] == ql[:, None]
    hits = rel.sum(1)
    precision = rel.cumsum(1) / torch.arange(1, rel.shape[1] + 1)
    ap = (precision * rel).sum(1) / hits.clamp(min=1)
    return float(ap[hits > 0].mean()) if bool((hits > 0).any()) else 0.0


@torch.no_grad()
def measure_proxy(backbone: nn.Module, cfg: Config, splits: Any = None) -> dict[str, float]:
    """proxy_top1 / proxy_top5 / proxy_map (video-level cosine retrieval, test -> train) and proxy_knn
    (weighted kNN accuracy) of `backbone` as it is now; its train/eval mode is restored afterwards."""
    from vpace.eval.features import ClipSpec, extract_features
    from vpace.eval.loading import LoadedModel
    from vpace.eval.metrics import topk_retrieval
    from vpace.eval.probes import knn_scores

    t0 = time.perf_counter()
    gallery, queries = splits if splits is not None else proxy_splits(cfg)
    px = cfg.proxy
    model = LoadedModel(backbone, cfg.model.backbone, digest="live", source="training", config=cfg)
    spec = ClipSpec.from_config(cfg, num_clips=px.num_clips)
    was_training = backbone.training
    try:
        kw = {"layers": (px.layer,), "spec": spec, "batch_size": 8, "num_workers": 0, "progress": False}
        train = extract_features(model, gallery, desc="proxy gallery", **kw)[px.layer]
        test = extract_features(model, queries, desc="proxy queries", **kw)[px.layer]
    finally:
        backbone.train(was_training)
    (g, gl), (q, ql) = train.video_level(), test.video_level()
    hits = topk_retrieval(q, ql, g, gl, ks=(1, 5))
    knn = knn_scores(train, test, len(gallery.classes), k=min(20, len(gl)))
    out = {"proxy_top1": hits[1], "proxy_top5": hits[5], "proxy_map": mean_average_precision(q, ql, g, gl),
           "proxy_knn": knn["video_acc"],
           "proxy_queries": float(len(ql)), "proxy_seconds": time.perf_counter() - t0}
    if train.skipped or test.skipped:
        out["proxy_skipped"] = float(len(train.skipped) + len(test.skipped))
    return out


class ProxyPretrainTask(PretrainTask):
    """Pre-training that also measures the proxy every `cfg.proxy.every_epochs` epochs and at the end."""

    name = "pretrain"  # same checkpoints as `vpace pretrain`: export/eval/resume treat them alike

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        proxy_splits(cfg)

    def epoch_metrics(self, epochs_done: int, final: bool) -> dict[str, float]:
        px = self.cfg.proxy
        if px.index is None or not (final or epochs_done % px.every_epochs == 0):
            return {}
        if not hasattr(self, "_splits"):
            self._splits = proxy_splits(self.cfg)
        out = measure_proxy(self.backbone(), self.cfg, self._splits)
        log.info("proxy after epoch %d: %s", epochs_done, {k: round(v, 4) for k, v in out.items()})
        return out
