"""Fused supervised contrastive loss (InfoNCE / SupCon / MoCo queue) that never builds N x (N+K) logits.

The loss, its arguments and their checks are ``contrastive_spec``. Three implementations, Liger style:
- Triton (CUDA, and CPU under ``TRITON_INTERPRET=1``): a forward kernel does an online (flash-attention)
  max/sum over key tiles then queue tiles and emits per-row LSE, positive-logit sum and positive count; the
  backward recomputes the tiles in two deterministic kernels (dq over rows, dk over key tiles; no atomics).
- Chunked PyTorch (``contrastive_cpu.py``; CPU training, and the CUDA fallback for D > 256 or float64): the
  same online LSE over row x column tiles with recomputation in backward, memory O(N*D + tile^2).
- Eager reference: full logits and ``log_softmax``; autograd gives the gradients. Ground truth for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .contrastive_cpu import chunked_backward, chunked_forward
from .contrastive_spec import BACKENDS, ContrastiveStats, prepare
from .launch import PLANNING_ARCH, Launch, launch, recording, target_arch
from .utils import TRITON_DTYPES, triton_can_run

__all__ = ["MAX_TRITON_DIM", "contrastive_loss", "contrastive_loss_reference", "pick_backend",
           "shipped_launches"]

MAX_TRITON_DIM = 256  # a q tile must fit in registers for the logits dot; larger D uses the chunked path
# Tiles: arch -> (kernel, input kind, BLOCK_D) -> (BLOCK_M, BLOCK_N, num_warps, num_stages[, BLOCK_DV]).
# dk's programs own key tiles, so its dots' M is BLOCK_N. fp32 uses 3xTF32 dots, which hold more operand
# registers; for D > 128 its backward programs may split the output columns (BLOCK_DV, default BLOCK_D).
# D <= 128 shares the 128 configs. Each entry is AOT-compiled, as launched, by the tests and the benchmark.
_BLOCK_DS = (128, 256)
_TILES = {
    # sm_80 and everything but sm_90 (and the interpreter): the largest tiles with zero spills on sm_80
    # under Triton 3.6 and 3.8.
    80: {
        ("fwd", "16", 128): (64, 64, 4, 2), ("fwd", "16", 256): (64, 64, 8, 2),
        ("fwd", "32", 128): (32, 64, 8, 2), ("fwd", "32", 256): (16, 32, 4, 2),
        ("dq", "16", 128): (64, 64, 8, 2), ("dq", "16", 256): (32, 64, 8, 2),
        ("dq", "32", 128): (16, 32, 4, 2), ("dq", "32", 256): (16, 32, 8, 2, 128),
        ("dk", "16", 128): (64, 64, 8, 2), ("dk", "16", 256): (64, 32, 8, 2),
        ("dk", "32", 128): (32, 16, 4, 2), ("dk", "32", 256): (32, 16, 8, 2, 128),
    },
}
_TILES[90] = {
    # sm_90 (H100/H200), from the AOT rows (README, benchmarks/results/kernels.csv): 16-bit tiles of 64 rows
    # on one warp group emit wgmma with 0 spills and 2 blocks per SM (8 warps would need <= 128 registers for
    # 2); fp32 (3xTF32) takes wgmma where it does not spill (D = 128: the backward splits the output columns,
    # BLOCK_DV 64), else the portable mma tiles that fit 2 blocks per SM.
    ("fwd", "16", 128): (64, 64, 4, 3), ("fwd", "16", 256): (64, 64, 4, 2),
    ("fwd", "32", 128): (64, 32, 4, 2), ("fwd", "32", 256): (16, 32, 4, 2),
    ("dq", "16", 128): (64, 64, 4, 3), ("dq", "16", 256): (64, 32, 4, 3),
    ("dq", "32", 128): (64, 16, 4, 2, 64), ("dq", "32", 256): (16, 32, 4, 2, 128),
    ("dk", "16", 128): (64, 64, 4, 3), ("dk", "16", 256): (32, 64, 4, 3),
    ("dk", "32", 128): (16, 64, 4, 2, 64), ("dk", "32", 256): (32, 16, 4, 2, 128),
}

# ----------------------------------------------------------------------------------------------- Triton

@triton.jit
def _rows(X, offs, lim, stride, offs_d, D):
    """Load rows ``offs`` (< lim) x columns ``offs_d`` (< D) of a row-major matrix; padding is 0."""
    return tl.load(X + offs[:, None] * stride + offs_d[None, :],
                   mask=(offs[:, None] < lim) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _logits_tile(q, K, offs_n, n_lim, stride_k, offs_d, D, scale, PREC: tl.constexpr):
    """[BLOCK_M, BLOCK_N] fp32 logits of a query tile against key rows ``offs_n`` (padding rows are 0)."""
    k = _rows(K, offs_n, n_lim, stride_k, offs_d, D)
    return tl.dot(q, tl.trans(k), input_precision=PREC) * scale, k


@triton.jit
def _online_lse(m_i, l_i, s):
    """One flash-attention step: fold the tile ``s`` (masked entries -inf) into the running max/sum."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
    return m_new, l_i


# Row counts and the exclude flag are not specialized (every N would compile again); D and the row strides
# are, so rows aligned to 16 elements get vector loads.
@triton.jit(do_not_specialize=["N", "NQ", "exclude"])
def _fwd_kernel(Q, K, QU, LAB, LSE, POS, CNT, N, NQ, D, stride_q, stride_k, stride_u, scale, exclude,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    q = _rows(Q, offs_m, N, stride_q, offs_d, D)
    lab_m = tl.load(LAB + offs_m, mask=m_ok, other=0)
    m_i = tl.full([BLOCK_M], -1e30, tl.float32)  # finite start: no (-inf) - (-inf) for fully masked tiles
    l_i = tl.zeros([BLOCK_M], tl.float32)
    pos = tl.zeros([BLOCK_M], tl.float32)
    cnt = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s, _k = _logits_tile(q, K, offs_n, N, stride_k, offs_d, D, scale, PREC)
        valid = (offs_n[None, :] < N) & ((exclude == 0) | (offs_m[:, None] != offs_n[None, :]))
        lab_n = tl.load(LAB + offs_n, mask=offs_n < N, other=0)
        y = valid & (lab_m[:, None] == lab_n[None, :])
        pos += tl.sum(tl.where(y, s, 0.0), 1)
        cnt += tl.sum(y.to(tl.float32), 1)
        m_i, l_i = _online_lse(m_i, l_i, tl.where(valid, s, float("-inf")))
    for start in range(0, NQ, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s, _k = _logits_tile(q, QU, offs_n, NQ, stride_u, offs_d, D, scale, PREC)
        m_i, l_i = _online_lse(m_i, l_i, tl.where(offs_n[None, :] < NQ, s, float("-inf")))
    # l_i == 0 only if a row has no key at all (N == 1, exclude_self, no queue): +inf makes p = 0 downstream.
    lse = tl.where(l_i > 0, m_i + tl.log(l_i), float("inf"))
    tl.store(LSE + offs_m, lse, mask=m_ok)
    tl.store(POS + offs_m, pos, mask=m_ok)
    tl.store(CNT + offs_m, cnt, mask=m_ok)


# Backward: each program owns a BLOCK_DV-wide column slice of its output tile (grid axis 1). BLOCK_DV <
# BLOCK_D recomputes the logits once per slice but keeps the second dot's operand small (fp32, D > 128).

@triton.jit
def _row_terms(LAB, LSE, W, C, offs, ok):
    """Per-query-row backward inputs: label, LSE, w = g / rows_used (0 if unused) and c = w / |P(i)|."""
    return (tl.load(LAB + offs, mask=ok, other=0), tl.load(LSE + offs, mask=ok, other=0.0),
            tl.load(W + offs, mask=ok, other=0.0), tl.load(C + offs, mask=ok, other=0.0))


@triton.jit(do_not_specialize=["N", "NQ", "exclude"])
def _bwd_dq_kernel(Q, K, QU, LAB, LSE, W, C, WS, DQ, N, NQ, D, stride_q, stride_k, stride_u, scale, exclude,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_DV: tl.constexpr):
    """dq_i = scale * sum_j (w_i p_ij - c_i y_ij) k_j, keys then queue (y = 0 there)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    m_ok = offs_m < N
    q = _rows(Q, offs_m, N, stride_q, offs_d, D)
    lab_m, lse, w, c = _row_terms(LAB, LSE, W, C, offs_m, m_ok)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s, k = _logits_tile(q, K, offs_n, N, stride_k, offs_d, D, scale, PREC)
        valid = (offs_n[None, :] < N) & ((exclude == 0) | (offs_m[:, None] != offs_n[None, :]))
        lab_n = tl.load(LAB + offs_n, mask=offs_n < N, other=0)
        y = valid & (lab_m[:, None] == lab_n[None, :])
        ds = tl.where(valid, w[:, None] * tl.exp(s - lse[:, None]), 0.0) - tl.where(y, c[:, None], 0.0)
        if BLOCK_DV < BLOCK_D:
            k = _rows(K, offs_n, N, stride_k, offs_v, D)
        acc += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    for start in range(0, NQ, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s, k = _logits_tile(q, QU, offs_n, NQ, stride_u, offs_d, D, scale, PREC)
        ds = tl.where(offs_n[None, :] < NQ, w[:, None] * tl.exp(s - lse[:, None]), 0.0)
        if BLOCK_DV < BLOCK_D:
            k = _rows(QU, offs_n, NQ, stride_u, offs_v, D)
        acc += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    out = acc * (scale * tl.load(WS))
    tl.store(DQ + offs_m[:, None] * stride_q + offs_v[None, :], out.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & (offs_v[None, :] < D))


@triton.jit(do_not_specialize=["N", "exclude"])
def _bwd_dk_kernel(Q, K, LAB, LSE, W, C, WS, DK, N, D, stride_q, stride_k, scale, exclude,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_DV: tl.constexpr):
    """dk_j = scale * sum_i (w_i p_ij - c_i y_ij) q_i: one program per key tile, looping over query tiles."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    n_ok = offs_n < N
    k = _rows(K, offs_n, N, stride_k, offs_d, D)
    lab_n = tl.load(LAB + offs_n, mask=n_ok, other=0)
    acc = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start in range(0, N, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < N
        st, q = _logits_tile(k, Q, offs_m, N, stride_q, offs_d, D, scale, PREC)  # [BLOCK_N, BLOCK_M]
        lab_m, lse, w, c = _row_terms(LAB, LSE, W, C, offs_m, m_ok)
        valid = m_ok[None, :] & ((exclude == 0) | (offs_n[:, None] != offs_m[None, :]))
        y = valid & (lab_n[:, None] == lab_m[None, :])
        ds = tl.where(valid, w[None, :] * tl.exp(st - lse[None, :]), 0.0) - tl.where(y, c[None, :], 0.0)
        if BLOCK_DV < BLOCK_D:
            q = _rows(Q, offs_m, N, stride_q, offs_v, D)
        acc += tl.dot(ds.to(q.dtype), q, input_precision=PREC)
    out = acc * (scale * tl.load(WS))
    tl.store(DK + offs_n[:, None] * stride_k + offs_v[None, :], out.to(DK.dtype.element_ty),
             mask=n_ok[:, None] & (offs_v[None, :] < D))


def _block_d(d: int) -> int:
    return next(b for b in _BLOCK_DS if b >= d)


def _kind(dtype: torch.dtype) -> str:
    return "32" if dtype in (torch.float32, torch.float64) else "16"


def _prec(dtype: torch.dtype) -> str:
    # 3xTF32 keeps fp32 accuracy (~1e-6) on tensor cores; the option is ignored for 16-bit inputs.
    return "tf32x3" if dtype == torch.float32 else "ieee"


def _config(name: str, d: int, dtype: torch.dtype, arch: int) -> tuple[int, int, int, int, dict]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages, constexprs) shipped for kernel ``name`` at this D / dtype on
    ``sm_<arch>`` (Hopper's own tiles on sm_90, the portable ones elsewhere and in the interpreter)."""
    bd = _block_d(d)
    bm, bn, warps, stages, *dv = _TILES[90 if arch == 90 else 80][(name, _kind(dtype), bd)]
    const = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "PREC": _prec(dtype)}
    if name != "fwd":
        const["BLOCK_DV"] = dv[0] if dv else bd
    return bm, bn, warps, stages, const


def _launch(name: str, q: torch.Tensor, *args) -> None:
    """Launch kernel ``name`` on ``q``'s device with the config shipped for its GPU; fwd/dq programs own query
    tiles, dk key tiles."""
    (n, d), dtype = q.shape, q.dtype
    bm, bn, warps, stages, const = _config(name, d, dtype, target_arch(q.device))
    slices = const["BLOCK_D"] // const.get("BLOCK_DV", const["BLOCK_D"])
    grid = (triton.cdiv(n, bn if name == "dk" else bm), slices)
    label = f"[{name},D{const['BLOCK_D']},{TRITON_DTYPES.get(dtype, dtype)}]"
    options = dict(const, num_warps=warps, num_stages=stages)
    launch(Launch(label, _KERNELS[name], grid, args, options), q.device)


def _triton_forward(q, k, queue, labels, scale, exclude):
    n, d = q.shape
    lse, pos, cnt = (torch.empty(n, device=q.device, dtype=torch.float32) for _ in range(3))
    qu = q if queue is None else queue
    nq = 0 if queue is None else queue.shape[0]
    _launch("fwd", q, q, k, qu, labels, lse, pos, cnt, n, nq, d, q.stride(0), k.stride(0), qu.stride(0),
            scale, int(exclude))
    return lse, pos, cnt


def _triton_backward(q, k, queue, labels, lse, w, c, scale, exclude, need_q, need_k):
    """fp32 dq, dk from the row weights ``w`` (``g / rows_used``) and ``c`` (``w / |P(i)|``). The kernels get
    them divided by ``max|w|`` and multiply their fp32 sums back at the store: the ``ds`` they cast for the
    second dot is then ~p_ij (<= 1), not ~p_ij / N, which leaves fp16's normal range at large N. The outputs
    stay fp32 until the caller has summed dq + dk (q = k), so a 16-bit gradient is rounded once."""
    n, d = q.shape
    w_max = w.abs().amax().clamp(min=torch.finfo(torch.float32).tiny)  # a device scalar: no sync
    w, c = w / w_max, c / w_max
    dq = dk = None
    if need_q:
        dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        qu = q if queue is None else queue
        nq = 0 if queue is None else queue.shape[0]
        _launch("dq", q, q, k, qu, labels, lse, w, c, w_max, dq, n, nq, d, q.stride(0), k.stride(0),
                qu.stride(0), scale, int(exclude))
    if need_k:
        dk = torch.empty(k.shape, dtype=torch.float32, device=k.device)
        _launch("dk", q, q, k, labels, lse, w, c, w_max, dk, n, d, q.stride(0), k.stride(0), scale,
                int(exclude))
    return dq, dk


# ------------------------------------------------------------------------------------- autograd + API

class _ContrastiveFn(torch.autograd.Function):
    """(q, k, queue, labels) -> (loss, rows_used); recomputes logits tiles in backward."""

    @staticmethod
    def forward(ctx, q, k, queue, labels, scale: float, exclude: bool, backend: str):
        ctx.in_dtype, ctx.same = q.dtype, k is q
        ctx.scale, ctx.exclude, ctx.backend = scale, exclude, backend
        if backend == "triton":
            lse, pos, cnt = _triton_forward(q, k, queue, labels, scale, exclude)
            ctx.save_for_backward(q, k, queue, labels, lse, cnt)
        else:
            acc = torch.promote_types(q.dtype, torch.float32)
            q = q.to(acc)
            k = q if ctx.same else k.to(acc)
            queue = None if queue is None else queue.to(acc)
            uniq, inv = torch.unique(labels, return_inverse=True)
            ctx.n_labels = len(uniq)
            lse, pos, cnt = chunked_forward(q, k, queue, inv, ctx.n_labels, scale, exclude)
            ctx.save_for_backward(q, k, queue, inv, lse, cnt)
        used = cnt > 0
        n_used = used.sum()
        rows = torch.where(used, lse - pos / cnt.clamp(min=1), 0.0)
        loss = rows.sum() / n_used.clamp(min=1)
        ctx.mark_non_differentiable(n_used)
        return loss, n_used

    @staticmethod
    def backward(ctx, grad, _grad_count):
        q, k, queue, labels, lse, cnt = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        used = cnt > 0
        w = torch.where(used, grad.to(lse.dtype) / used.sum().clamp(min=1), 0.0)
        c = w / cnt.clamp(min=1)
        if ctx.backend == "triton":
            dq, dk = _triton_backward(q, k, queue, labels, lse, w, c, ctx.scale, ctx.exclude, need_q, need_k)
            if ctx.same and dq is not None and dk is not None:
                dq, dk = dq.add_(dk), None
        else:
            dq, dk = chunked_backward(q, k, queue, labels, ctx.n_labels, lse, w, c, ctx.scale, ctx.exclude,
                                       need_q, need_k, ctx.same and need_q)
        dq = None if dq is None else dq.to(ctx.in_dtype)
        dk = None if dk is None else dk.to(ctx.in_dtype)
        return dq, dk, None, None, None, None, None


def pick_backend(q: torch.Tensor) -> str:
    """The backend ``backend=None`` runs: "triton" where Triton runs (CUDA, or the interpreter) for fp32 /
    16-bit inputs with D <= MAX_TRITON_DIM, else "chunked"."""
    on_triton = triton_can_run(q, _fwd_kernel, _bwd_dq_kernel, _bwd_dk_kernel)
    return "triton" if on_triton and q.dtype in TRITON_DTYPES and q.shape[1] <= MAX_TRITON_DIM else "chunked"


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, *,
                     queue: torch.Tensor | None = None, tau: float = 0.07, normalize: bool = True,
                     exclude_self: bool = True, return_stats: bool = False, backend: str | None = None):
    """Supervised InfoNCE over keys (positives = same label) plus queue negatives, memory O(N*D).

    ``exclude_self=True`` means q and k are the SAME rows (SimCLR/SupCon: ``q = k = cat(z1, z2)``): the
    diagonal is dropped from denominator and positives. For distinct keys (MoCo/RSPNet, ``k_i`` the positive
    of ``q_i``) pass ``exclude_self=False``. Rows without a positive are excluded from the mean and counted in
    ``stats.rows_without_positive`` (``return_stats=True``); if no row has one the loss is 0 with zero grad.
    ``backend``: None picks "triton" on CUDA (and on CPU when the kernels were imported under
    TRITON_INTERPRET=1, i.e. tests), else "chunked"; D > 256 or float64 always use "chunked". "eager" is the
    full-logits reference.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected None or one of {BACKENDS}, got {backend!r}")
    qn, kn, qu = prepare(q, k, labels, queue, tau, normalize, exclude_self, lean=backend != "eager")
    backend = backend or pick_backend(qn)
    if backend == "eager":
        loss, n_used = _eager(qn, kn, qu, labels, 1.0 / tau, exclude_self)
    else:
        qc = qn.contiguous()
        kc = qc if kn is qn else kn.contiguous()
        qu = None if qu is None else qu.contiguous()
        loss, n_used = _ContrastiveFn.apply(qc, kc, qu, labels.contiguous(), 1.0 / float(tau),
                                            bool(exclude_self), backend)
    if not return_stats:
        return loss
    rows = torch.full((), q.shape[0], dtype=n_used.dtype, device=q.device)  # a fill, not a host copy
    return loss, ContrastiveStats(rows=rows, rows_used=n_used, rows_without_positive=rows - n_used)


def _eager(q, k, queue, labels, scale, exclude):
    acc = torch.promote_types(q.dtype, torch.float32)
    keys = k if queue is None else torch.cat([k, queue])
    logits = (q.to(acc) @ keys.to(acc).T) * scale
    n = q.shape[0]
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    if exclude:
        self_mask[:, :n].fill_diagonal_(True)
    logp = torch.log_softmax(logits.masked_fill(self_mask, float("-inf")), dim=1)
    pos = torch.zeros_like(self_mask)
    pos[:, :n] = labels[:, None] == labels[None, :]
    pos &= ~self_mask
    cnt = pos.sum(1)
    used = cnt > 0
    rows = -logp.masked_fill(~pos, 0.0).sum(1) / cnt.clamp(min=1)
    return torch.where(used, rows, 0.0).sum() / used.sum().clamp(min=1), used.sum()


def contrastive_loss_reference(q, k, labels, *, queue=None, tau=0.07, normalize=True, exclude_self=True,
                               return_stats=False):
    """Eager ground truth: materialises the full N x (N+K) logits (tests and benchmarks only)."""
    return contrastive_loss(q, k, labels, queue=queue, tau=tau, normalize=normalize,
                            exclude_self=exclude_self, return_stats=return_stats, backend="eager")


# ------------------------------------------------------------------------------------------- AOT
_KERNELS = {"fwd": _fwd_kernel, "dq": _bwd_dq_kernel, "dk": _bwd_dk_kernel}
SHIPPED_DIMS = (128, 256)  # embedding widths the models ship (each BLOCK_D class at a 16-divisible D)
_PLAN_ROWS = 4096  # row counts are not specialised: any N gives the same compiled variant


def shipped_launches(arch: int = PLANNING_ARCH,
                     dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> list[Launch]:
    """The launches forward + backward make on ``sm_<arch>`` for every shipped D and ``dtypes``, recorded on
    ``meta`` tensors through the real launch path (``vpace_kernels.aot.aot_compile_launches`` input)."""
    out = []
    with recording(arch) as launches:
        for d in SHIPPED_DIMS:
            for dtype in dtypes:
                q, k, queue = (torch.empty(r, d, dtype=dtype, device="meta") for r in (_PLAN_ROWS,) * 3)
                labels = torch.empty(_PLAN_ROWS, dtype=torch.int64, device="meta")
                lse, _, cnt = _triton_forward(q, k, queue, labels, 1 / 0.07, True)
                w = torch.where(cnt > 0, 1.0 / _PLAN_ROWS, 0.0)
                c = w / cnt.clamp(min=1)
                _triton_backward(q, k, queue, labels, lse, w, c, 1 / 0.07, True, True, True)
        out += launches
    return out
