"""Chunked PyTorch version of the fused contrastive loss (``contrastive_spec`` has the contract,
``contrastive`` the Triton kernels, the autograd function and the eager reference).

CPU training, and the CUDA fallback for D > 256 or float64: the online LSE of the Triton kernels over
row x column tiles in torch, recomputing the tiles in backward; memory O(N*D + tile^2). Positive terms are
linear in the logits, so they come from per-label sums of keys/queries in O(N*D) instead of a mask per tile.
"""

from __future__ import annotations

import torch

__all__ = ["TILE", "chunked_backward", "chunked_forward"]

TILE = 1024  # 1024 x 1024 logits tiles (4 MB fp32; fewer, larger ops than 512)


def _tiles(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None):
    """Row blocks of q, each with its column blocks of keys then queue: (r0, rows, [(c0 | None, block)]).

    Bounded TILE x TILE logits tiles (memory O(N*D + tile^2)); each pass over a tile is cache-friendly,
    unlike eager's N x N tensors streamed through memory several times.
    """
    cols = [(c0, k[c0:c0 + TILE]) for c0 in range(0, k.shape[0], TILE)]
    if queue is not None:
        cols += [(None, queue[c0:c0 + TILE]) for c0 in range(0, queue.shape[0], TILE)]
    for r0 in range(0, q.shape[0], TILE):
        yield r0, q[r0:r0 + TILE], cols


def _tile_logits(rows, r0, block, c0, scale, exclude, shift=None) -> torch.Tensor:
    """scale * rows @ block.T minus a per-row ``shift`` (both fused into the GEMM), self-pairs set to -inf."""
    bias = rows.new_zeros(()) if shift is None else shift[:, None]
    s = torch.addmm(bias, rows, block.T, beta=-1.0, alpha=scale)
    if exclude and c0 is not None:  # the diagonal j == i crossing this tile
        lo, hi = max(r0, c0), min(r0 + rows.shape[0], c0 + block.shape[0])
        if lo < hi:
            idx = torch.arange(lo, hi, device=rows.device)
            s[idx - r0, idx - c0] = float("-inf")
    return s


def _label_sum(x, inv, n_labels, weight=None, out=None) -> torch.Tensor:
    """Row i gets sum_{j: label j == label i} (weight_j *) x_j, in O(N*D) with no N x N mask."""
    src = x if weight is None else torch.mul(x, weight[:, None], out=out)
    sums = x.new_zeros(n_labels, x.shape[1]).index_add_(0, inv, src)
    return torch.index_select(sums, 0, inv, out=out)


def chunked_forward(q, k, queue, inv, n_labels, scale, exclude):
    lse = torch.empty_like(q[:, 0])
    for r0, rows, cols in _tiles(q, k, queue):
        m = rows.new_full((rows.shape[0],), -1e30)
        l_sum = torch.zeros_like(m)
        for c0, block in cols:
            s = _tile_logits(rows, r0, block, c0, scale, exclude)
            m_new = torch.maximum(m, s.amax(1))
            l_sum = l_sum.mul_(torch.exp(m - m_new)).add_(s.sub_(m_new[:, None]).exp_().sum(1))
            m = m_new
        lse[r0:r0 + rows.shape[0]] = torch.where(l_sum > 0, m + torch.log(l_sum), float("inf"))
    cnt = (torch.bincount(inv, minlength=n_labels)[inv] - int(exclude)).to(q.dtype)
    pos_keys = _label_sum(k, inv, n_labels)
    if exclude:
        pos_keys.sub_(k)
    return lse, pos_keys.mul_(q).sum(1).mul_(scale), cnt


def chunked_backward(q, k, queue, inv, n_labels, lse, w, c, scale, exclude, need_q, need_k, same):
    """dq, dk (or, when k is q, their sum in dq) with one tile and one N x D temporary live."""
    dq = torch.zeros_like(q) if need_q or same else None
    dk = dq if same else (torch.zeros_like(k) if need_k else None)
    for r0, rows, cols in _tiles(q, k, queue):
        r1 = r0 + rows.shape[0]
        acc = torch.zeros_like(rows) if dq is not None else None
        rows_w = rows * w[r0:r1, None] if dk is not None else None  # (w * p).T @ rows == p.T @ (w * rows)
        for c0, block in cols:
            p = _tile_logits(rows, r0, block, c0, scale, exclude, shift=lse[r0:r1]).exp_()
            if acc is not None:
                acc.addmm_(p, block)
            if dk is not None and c0 is not None:
                dk[c0:c0 + block.shape[0]].addmm_(p.T, rows_w)
        if acc is not None:
            dq[r0:r1].addcmul_(acc, w[r0:r1, None])
    tmp = None
    if dq is not None:  # positive terms: dq_i -= c_i * sum_{j in P(i)} k_j
        tmp = _label_sum(k, inv, n_labels)
        if exclude:
            tmp.sub_(k)
        dq.addcmul_(tmp, c[:, None], value=-1.0)
    if dk is not None:  # dk_j -= sum_{i: j in P(i)} c_i q_i
        tmp = _label_sum(q, inv, n_labels, weight=c, out=tmp)
        if exclude:
            tmp.addcmul_(q, c[:, None], value=-1.0)
        dk.sub_(tmp)
    del tmp
    return (None if dq is None else dq.mul_(scale)), (None if dk is None or same else dk.mul_(scale))
