"""The search objective: kNN retrieval of the *current* backbone on a labeled split, measured during training.

Why not the pretext loss: pace sets of different sizes are different classification problems, so their losses
and accuracies do not compare; the paper picks pace ranges by downstream accuracy (Table 1). Retrieval top-1
(test videos query the train split by cosine similarity, `vpace.eval`'s protocol with fewer clips) needs no
training and ranks representations cheaply, so it can run every `proxy.every_epochs` epochs. Each value comes
with a bootstrap interval over the query videos: with a few dozen queries the proxy's own noise is as large as
the gaps between trials, and the report says so.

`PROXY_PRETRAIN` is pre-training plus that measurement: the training loop calls its `epoch_metrics` on rank 0
at each epoch end, and what it returns is reported with that epoch's checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from vpace.config import Config, ConfigError, load_config
from vpace.train.pretraining import PRETRAIN
from vpace.tune.space import INTERVAL_LEVEL, INTERVAL_RESAMPLES, interval_keys

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


def query_scores(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                 num_classes: int) -> dict[str, np.ndarray]:
    """Each proxy metric as one value per query video, so its mean is the metric and resampling the queries
    gives its noise: hit at 1 and 5 (cosine retrieval, test -> train), average precision (queries with a
    gallery item of their class; the whole ranking, so unlike top-1 over a few dozen queries it rarely ties,
    what a scheduler comparing trials needs) and weighted-kNN correctness (k = 20)."""
    from vpace.eval.metrics import cosine_topk, knn_predict, retrieval_hits

    hits = retrieval_hits(query, query_labels, gallery, gallery_labels, ks=(1, 5))
    _, idx = cosine_topk(query, gallery, len(gallery))
    gl, ql = torch.as_tensor(np.asarray(gallery_labels)), torch.as_tensor(np.asarray(query_labels))
    rel = gl[idx] == ql[:, None]
    relevant = rel.sum(1)
    precision = rel.cumsum(1) / torch.arange(1, rel.shape[1] + 1)
    ap = ((precision * rel).sum(1) / relevant.clamp(min=1))[relevant > 0]
    knn = knn_predict(gallery, gallery_labels, query, num_classes, k=min(20, len(gallery))).argmax(1) == ql
    per_query = {"proxy_top1": hits[1], "proxy_top5": hits[5], "proxy_map": ap, "proxy_knn": knn}
    return {k: v.double().numpy() for k, v in per_query.items()}


def with_intervals(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Each metric (the mean over its queries) and the ends of its bootstrap interval (`interval_keys`)."""
    from vpace.eval.metrics import bootstrap_interval

    out = {}
    for name, values in per_query.items():
        lo, hi = interval_keys(name)
        if not len(values):  # mAP of queries none of whose classes is in the gallery
            out[name] = out[lo] = out[hi] = 0.0
            continue
        out[name] = float(values.mean())
        out[lo], out[hi] = bootstrap_interval(values, level=INTERVAL_LEVEL, resamples=INTERVAL_RESAMPLES)
    return out


@torch.no_grad()
def measure_proxy(backbone: nn.Module, cfg: Config, splits: Any = None) -> dict[str, float]:
    """proxy_top1 / proxy_top5 / proxy_map (video-level cosine retrieval, test -> train) and proxy_knn
    (weighted kNN accuracy) of `backbone` as it is now, each with its bootstrap interval over the query
    videos; its train/eval mode is restored afterwards."""
    from vpace.eval.features import ClipSpec, extract_features
    from vpace.eval.loading import LoadedModel

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
    out = with_intervals(query_scores(q, ql, g, gl, len(gallery.classes)))
    out.update({"proxy_queries": float(len(ql)), "proxy_seconds": time.perf_counter() - t0})
    if train.skipped or test.skipped:
        out["proxy_skipped"] = float(len(train.skipped) + len(test.skipped))
    return out


@functools.lru_cache(maxsize=4)
def _splits_of(fields: str) -> Any:
    return proxy_splits(load_config(data=json.loads(fields)))


def proxy_metrics(backbone: nn.Module, cfg: Config, epochs_done: int, final: bool) -> dict[str, float]:
    """The training loop's `epoch_metrics`: the proxy every `proxy.every_epochs` epochs and at the end
    (its splits are read once per worker process)."""
    px = cfg.proxy
    if px.index is None or not (final or epochs_done % px.every_epochs == 0):
        return {}
    key = json.dumps({"proxy": cfg.to_dict()["proxy"], "data": {"split_id": cfg.data.split_id}})
    out = measure_proxy(backbone, cfg, _splits_of(key))
    log.info("proxy after epoch %d: %s", epochs_done, {k: round(v, 4) for k, v in out.items()})
    return out


def _check_proxy(cfg: Config) -> None:
    PRETRAIN.check(cfg)
    proxy_splits(cfg)


# pre-training plus the proxy: the same checkpoints as `vpace pretrain` (export/eval/resume treat them alike)
PROXY_PRETRAIN = dataclasses.replace(PRETRAIN, check=_check_proxy, epoch_metrics=proxy_metrics)
