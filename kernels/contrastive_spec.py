"""The contract of the fused contrastive loss, shared by its Triton, chunked and eager versions.

Row loss: ``LSE_i - mean_{j in P(i)} s_ij`` with ``s_ij = q_i . k_j / tau`` over keys then queue, P(i) the
keys (never the queue) whose label equals ``labels[i]`` (``j != i`` when ``exclude_self``). The loss is the
mean over rows that have a positive; the others are excluded and counted (:class:`ContrastiveStats`).
Every version takes its inputs from :func:`prepare`: argument checks, then L2 normalisation of q, k and the
(gradient-free) queue.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .limits import TAU_RANGE
from .utils import describe

__all__ = ["BACKENDS", "TAU_RANGE", "ContrastiveStats", "prepare", "validate"]

# "triton": fused kernels (CUDA; CPU under TRITON_INTERPRET); "chunked": tiled torch on any device (memory
# O(N*D + tile^2)); "eager": full N x (N+K) logits, the ground truth (``contrastive_loss_reference``).
BACKENDS = ("triton", "chunked", "eager")


class ContrastiveStats(NamedTuple):
    """Per-call counts (0-dim int64 tensors on the input device, so reading them is the caller's sync)."""

    rows: torch.Tensor
    rows_used: torch.Tensor
    rows_without_positive: torch.Tensor


def validate(q, k, labels, queue, tau) -> None:
    """Raise ValueError naming the first bad argument."""
    if not isinstance(q, torch.Tensor) or q.dim() != 2 or not q.is_floating_point():
        raise ValueError(f"q: expected a floating tensor [N, D], got {describe(q)}")
    if q.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"q: expected N >= 1 rows and D >= 1 columns, got shape {tuple(q.shape)}")
    if not isinstance(k, torch.Tensor) or tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k: expected shape {tuple(q.shape)} (one key per query row), got {describe(k)}")
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError(f"k: dtype/device {k.dtype}/{k.device} differ from q's {q.dtype}/{q.device}")
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != q.shape[0]
            or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        raise ValueError(f"labels: expected an integer tensor [{q.shape[0]}], got {describe(labels)}")
    if labels.device != q.device:
        raise ValueError(f"labels: on {labels.device}, q on {q.device}")
    if queue is not None:
        if not isinstance(queue, torch.Tensor) or queue.dim() != 2 or queue.shape[1] != q.shape[1] \
                or not queue.is_floating_point():
            raise ValueError(f"queue: expected a floating tensor [K, {q.shape[1]}], got {describe(queue)}")
        if queue.device != q.device:
            raise ValueError(f"queue: on {queue.device}, q on {q.device}")
    if not isinstance(tau, (int, float)) or not TAU_RANGE[0] <= float(tau) <= TAU_RANGE[1]:
        raise ValueError(f"tau: must be a number in [{TAU_RANGE[0]}, {TAU_RANGE[1]}], got {tau!r}")


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


def prepare(q, k, labels, queue, tau, normalize, exclude_self, lean=True):
    """Shared front end: validation, differentiable L2 normalisation (``lean``: the one-temporary backward;
    else ``F.normalize``, as the eager reference does), gradient-free queue. Returns (q, k, queue)."""
    validate(q, k, labels, queue, tau)
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
