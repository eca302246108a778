"""Pure maths of the evaluation protocols: cosine top-k retrieval, kNN voting, clip/video accuracy, bootstrap
intervals over queries.

Why a module of its own: these are the numbers the paper's tables report, so they are tested on hand-made
inputs with known answers, independent of models, data and Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vpace.errors import UserError

KS: tuple[int, ...] = (1, 5, 10, 20, 50)
Features = np.ndarray | torch.Tensor  # [N, D] rows
Labels = Sequence[int] | np.ndarray


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.float()


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_topk(
    query: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int, *, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery rows by cosine similarity for each query row -> (sims [Nq, k], indices [Nq, k]).

    Queries are processed in chunks so per-clip retrieval on UCF101 (~38k x 95k) never holds the full matrix.
    Exact ties are ordered by gallery index (lower first), so results are deterministic.
    """
    q, g = l2_normalize(_as_tensor(query)), l2_normalize(_as_tensor(gallery))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got query {tuple(q.shape)}, "
                         f"gallery {tuple(g.shape)}")
    k = min(k, g.shape[0])
    sims, idx = [], []
    for s in range(0, q.shape[0], chunk):
        sim = q[s:s + chunk] @ g.T
        # stable descending sort: equal similarities keep gallery order (topk alone is unspecified on ties)
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
        idx.append(order)
        sims.append(torch.gather(sim, 1, order))
    return torch.cat(sims), torch.cat(idx)


def retrieval_hits(query: Features, query_labels: Labels, gallery: Features, gallery_labels: Labels,
                   ks: Sequence[int] = KS) -> dict[int, torch.Tensor]:
    """Per query, whether it is a hit at k (VCOP/VCP/pace §4.4): any of its k nearest gallery items (cosine
    similarity) has its class. Returns {k: bool [Nq]}; k larger than the gallery is clamped to its size.
    Per query rather than a fraction, so a caller can also resample the queries (`bootstrap_interval`)."""
    ql = torch.as_tensor(np.asarray(query_labels), dtype=torch.long)
    gl = torch.as_tensor(np.asarray(gallery_labels), dtype=torch.long)
    if len(ql) == 0:
        raise UserError("no queries: the test split has no (readable) videos")
    if len(gl) == 0:
        raise UserError("empty gallery: the train split has no (readable) videos")
    _, idx = cosine_topk(query, gallery, max(ks))
    same = gl[idx] == ql[:, None]  # [Nq, kmax]
    return {int(k): same[:, :k].any(dim=1) for k in ks}


def topk_retrieval(query: Features, query_labels: Labels, gallery: Features, gallery_labels: Labels,
                   ks: Sequence[int] = KS) -> dict[int, float]:
    """Top-k retrieval accuracy: {k: fraction of queries that are hits at k} (`retrieval_hits`)."""
    hits = retrieval_hits(query, query_labels, gallery, gallery_labels, ks)
    return {k: int(h.sum()) / len(h) for k, h in hits.items()}  # exact count / queries


def bootstrap_interval(values: Sequence[float] | np.ndarray | torch.Tensor, *, level: float = 0.95,
                       resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item values (items drawn with replacement).

    Why: a metric over a few dozen query videos moves by more than the gaps between the models it ranks; the
    interval says by how much another draw of as many queries would move it. Seeded: same values, same
    interval."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if not 0.0 < level < 1.0 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1, got level={level}, resamples={resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    rows = max(1, 2**22 // v.size)  # resamples drawn at once: a few MB of indices whatever the query count
    for s in range(0, resamples, rows):
        idx = rng.integers(0, v.size, (min(rows, resamples - s), v.size))
        means[s:s + len(idx)] = v[idx].mean(axis=1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def knn_predict(
    train: np.ndarray | torch.Tensor,
    train_labels: Sequence[int] | np.ndarray,
    test: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Weighted kNN class scores [N_test, num_classes] (InstDisc-style: vote exp(cos/T) of the k nearest).

    Why weighted: plain majority voting ties often at small k and is worse on few-shot splits."""
    sims, idx = cosine_topk(test, train, k)
    labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)[idx]
    scores = torch.zeros(sims.shape[0], num_classes)
    scores.scatter_add_(1, labels, torch.exp(sims / temperature))
    return scores


def clip_and_video_accuracy(
    clip_probs: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """Accuracy of per-clip predictions and of the video prediction from clip probabilities averaged over
    the clips (the paper's §4.1 test protocol). clip_probs: [N_videos, num_clips, num_classes]."""
    p = _as_tensor(clip_probs)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if p.ndim != 3 or p.shape[0] != len(y):
        raise ValueError(f"clip_probs must be [N, clips, classes] with N={len(y)}, got {tuple(p.shape)}")
    clip_hits = int((p.argmax(-1) == y[:, None]).sum())
    video_hits = int((p.mean(1).argmax(-1) == y).sum())
    return {"video_acc": video_hits / len(y), "clip_acc": clip_hits / p[..., 0].numel(), "num_videos": len(y)}
