"""PyTorch side of the fused contrastive loss (``kernels.contrastive`` has the contract, the Triton kernels,
the autograd function and the eager reference).

* The chunked path (CPU training, and the CUDA fallback for D > 256 or float64): the online LSE of the Triton
  kernels over row x column tiles in torch, recomputing the tiles in backward; memory O(N*D + tile^2).
  Positive terms are linear in the logits, so they come from per-label sums of keys/queries in O(N*D)
  instead of a mask per tile.
* The front end every backend shares: argument checks and a lean differentiable L2 normalisation.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

TAU_RANGE = (1e-3, 10.0)
_TILE = 1024  # chunked path: 1024 x 1024 logits tiles (4 MB fp32; fewer, larger ops than 512)


# ------------------------------------------------------------------------------------- chunked PyTorch
def _tiles(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None):
    """Row blocks of q, each with its column blocks of keys then queue: (r0, rows, [(c0 | None, block)]).

    Bounded _TILE x _TILE logits tiles (memory O(N*D + tile^2)); each pass over a tile is cache-friendly,
    unlike eager's N x N tensors streamed through memory several times.
    """
    cols = [(c0, k[c0:c0 + _TILE]) for c0 in range(0, k.shape[0], _TILE)]
    if queue is not None:
        cols += [(None, queue[c0:c0 + _TILE]) for c0 in range(0, queue.shape[0], _TILE)]
    for r0 in range(0, q.shape[0], _TILE):
        yield r0, q[r0:r0 + _TILE], cols


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


def _chunked_forward(q, k, queue, inv, n_labels, scale, exclude):
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


def _chunked_backward(q, k, queue, inv, n_labels, lse, w, c, scale, exclude, need_q, need_k, same):
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


# ------------------------------------------------------------------------------------- front end
def _validate(q, k, labels, queue, tau) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 2 or not q.is_floating_point():
        raise ValueError(f"q: expected a floating tensor [N, D], got {_describe(q)}")
    if q.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"q: expected N >= 1 rows and D >= 1 columns, got shape {tuple(q.shape)}")
    if not isinstance(k, torch.Tensor) or tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k: expected shape {tuple(q.shape)} (one key per query row), got {_describe(k)}")
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError(f"k: dtype/device {k.dtype}/{k.device} differ from q's {q.dtype}/{q.device}")
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != q.shape[0]
            or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        raise ValueError(f"labels: expected an integer tensor [{q.shape[0]}], got {_describe(labels)}")
    if labels.device != q.device:
        raise ValueError(f"labels: on {labels.device}, q on {q.device}")
    if queue is not None:
        if not isinstance(queue, torch.Tensor) or queue.dim() != 2 or queue.shape[1] != q.shape[1] \
                or not queue.is_floating_point():
            raise ValueError(f"queue: expected a floating tensor [K, {q.shape[1]}], got {_describe(queue)}")
        if queue.device != q.device:
            raise ValueError(f"queue: on {queue.device}, q on {q.device}")
    if not isinstance(tau, (int, float)) or not TAU_RANGE[0] <= float(tau) <= TAU_RANGE[1]:
        raise ValueError(f"tau: must be a number in [{TAU_RANGE[0]}, {TAU_RANGE[1]}], got {tau!r}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


class _L2Normalize(torch.autograd.Function):
    """F.normalize(x, dim=1) with a lean backward: one N x D temporary instead of autograd's four."""

    @staticmethod
    def forward(ctx, x, eps: float = 1e-12):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        norm = torch.linalg.vector_norm(xf, dim=1)
        inv = 1.0 / norm.clamp(min=eps)
        y = (xf * inv[:, None]).to(x.dtype)
        ctx.save_for_backward(y, inv, norm >= eps)
        return y

    @staticmethod
    def backward(ctx, g):
        y, inv, unclamped = ctx.saved_tensors
        gf, yf = g.to(inv.dtype), y.to(inv.dtype)
        dot = torch.bmm(gf[:, None, :], yf[:, :, None]).view(-1) * unclamped  # clamped rows: plain g / eps
        return torch.addcmul(gf, yf, dot[:, None], value=-1.0).mul_(inv[:, None]).to(g.dtype), None


def _prepare(q, k, labels, queue, tau, normalize, exclude_self, lean=True):
    """Shared front end: validation, differentiable L2 normalisation, gradient-free queue."""
    _validate(q, k, labels, queue, tau)
    if exclude_self and k is not q:
        warnings.warn("contrastive_loss: exclude_self=True with k a different tensor from q treats key i as "
                      "query i itself and drops it; pass exclude_self=False for MoCo/RSPNet positive keys",
                      stacklevel=3)
    acc = torch.promote_types(q.dtype, torch.float32)  # 16-bit inputs: normalise in fp32, keep their dtype
    norm = _L2Normalize.apply if lean else (lambda x: F.normalize(x.to(acc), dim=1).to(x.dtype))
    norm = norm if normalize else (lambda x: x)
    qn = norm(q)
    kn = qn if k is q else norm(k)
    qu = None if queue is None else norm(queue.detach().to(q.dtype))
    return qn, kn, qu
