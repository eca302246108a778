"""Pure maths of the evaluation protocols: cosine top-k retrieval, kNN voting, clip/video accuracy.

Why a module of its own: these are the numbers the paper's tables report, so they are tested on hand-made
inputs with known answers, independent of models, data and Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vpace.errors import UserError

KS: tuple[int, ...] = (1, 5, 10, 20, 50)


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


def topk_retrieval(
    query: np.ndarray | torch.Tensor,
    query_labels: Sequence[int] | np.ndarray,
    gallery: np.ndarray | torch.Tensor,
    gallery_labels: Sequence[int] | np.ndarray,
    ks: Sequence[int] = KS,
) -> dict[int, float]:
    """Top-k retrieval accuracy (VCOP/VCP/pace §4.4): a query is a hit at k if any of its k nearest gallery
    items (cosine similarity) has its class. Returns {k: fraction of hits}; k larger than the gallery is
    clamped to the gallery size."""
    ql = torch.as_tensor(np.asarray(query_labels), dtype=torch.long)
    gl = torch.as_tensor(np.asarray(gallery_labels), dtype=torch.long)
    if len(ql) == 0:
        raise UserError("no queries: the test split has no (readable) videos")
    if len(gl) == 0:
        raise UserError("empty gallery: the train split has no (readable) videos")
    _, idx = cosine_topk(query, gallery, max(ks))
    same = gl[idx] == ql[:, None]  # [Nq, kmax]
    return {int(k): int(same[:, :k].any(dim=1).sum()) / len(ql) for k in ks}  # exact count / queries


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
