"""Fused contrastive loss: Triton (interpreter) and chunked CPU paths vs the eager full-logits reference."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU tensors

import pytest  # noqa: E402
import torch  # noqa: E402

from vpace_kernels import contrastive as C  # noqa: E402
from vpace_kernels import contrastive_cpu as CC  # noqa: E402

_NOT_INTERPRETED = "kernels.contrastive was imported before TRITON_INTERPRET=1 was set"
BACKENDS = [pytest.param("triton", marks=pytest.mark.skipif(not C._interpreted(), reason=_NOT_INTERPRETED)),
            "chunked"]
N = 70  # not a multiple of any shipped tile (16/32/64), > 64: every kernel loops over several tiles


def _inputs(n, d, *, n_labels, queue=0, separate_k=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_() if separate_k else q
    labels = torch.randint(0, n_labels, (n,), generator=g)
    qu = torch.randn(queue, d, generator=g, dtype=dtype) if queue else None
    return q, k, labels, qu


def _run(q, k, labels, backend, **kw):
    """(loss, stats, grads of q and, when distinct and trainable, k)."""
    loss, stats = C.contrastive_loss(q, k, labels, return_stats=True, backend=backend, **kw)
    wrt = [q] + ([k] if k is not q and k.requires_grad else [])
    return loss, stats, torch.autograd.grad(loss, wrt)


def _assert_rel(a, b, tol, what):
    err = (a.double() - b.double()).abs().max().item()
    scale = max(b.double().abs().max().item(), 1e-12)
    assert err <= tol * scale, f"{what}: max abs err {err:.3g} > {tol} * {scale:.3g}"


def _check(q, k, labels, backend, tol=1e-4, **kw):
    kw.setdefault("exclude_self", k is q)
    loss, stats, grads = _run(q, k, labels, backend, **kw)
    ref_loss, ref_stats, ref_grads = _run(q, k, labels, "eager", **kw)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    _assert_rel(loss.detach(), ref_loss.detach(), tol, "loss")
    for name, g, rg in zip("qk"[:len(grads)], grads, ref_grads, strict=True):
        assert g.dtype == rg.dtype == q.dtype
        _assert_rel(g, rg, tol, f"d{name}")
    assert int(stats.rows_without_positive) == int(ref_stats.rows_without_positive)
    return loss, stats


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [16, 128, 130])
@pytest.mark.parametrize("case", ["simclr", "simclr+queue", "moco", "unique"])
def test_matches_eager_reference(backend, d, case):
    if case == "simclr":  # q = k, duplicate labels (several clips per video)
        q, k, labels, qu = _inputs(N, d, n_labels=12)
    elif case == "simclr+queue":
        q, k, labels, qu = _inputs(N, d, n_labels=9, queue=45)
    elif case == "moco":  # RSPNet A-VID: distinct positive keys (labels = arange), queue negatives only
        q, k, labels, qu = _inputs(N, d, n_labels=1, queue=45, separate_k=True)
        labels = torch.arange(N)
    else:  # all-unique labels except one pair: with exclude_self only rows 0 and 1 have a positive
        q, k, labels, qu = _inputs(N, d, n_labels=1)
        labels = torch.arange(N)
        labels[1] = 0
    _, stats = _check(q, k, labels, backend, queue=qu, tau=0.1 if d == 16 else 0.07)
    if case == "unique":
        assert (int(stats.rows_used), int(stats.rows_without_positive)) == (2, N - 2)
    if case == "moco":
        assert int(stats.rows_without_positive) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_rows_without_positive_are_counted(backend):
    q, k, labels, qu = _inputs(N, 32, n_labels=20, queue=10, seed=3)
    labels[:7] = 1000 + torch.arange(7)  # 7 labels that occur exactly once
    counts = torch.bincount(torch.unique(labels, return_inverse=True)[1])
    singletons = int((counts == 1).sum())
    _, stats = _check(q, k, labels, backend, queue=qu, normalize=False, tau=2.0)
    assert int(stats.rows_without_positive) == singletons >= 7
    assert int(stats.rows) == N


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_positive_anywhere_gives_zero_loss_and_grad(backend):
    q, k, labels, qu = _inputs(37, 16, n_labels=1, queue=5)
    labels = torch.arange(37)
    loss, stats, (dq,) = _run(q, q, labels, backend, queue=qu)
    assert loss.item() == 0.0 and torch.equal(dq, torch.zeros_like(dq))
    assert int(stats.rows_without_positive) == 37 and int(stats.rows_used) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_keys_get_no_grad(backend):
    q, k, labels, qu = _inputs(N, 130, n_labels=5, queue=20, separate_k=True)
    k = k.detach()
    _check(q, k, labels, backend, queue=qu, exclude_self=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter keeps bf16 as uint16 and tl.dot multiplies the bit patterns "
                    "(triton-lang/triton#11584, unsupported upstream); fp16 runs the same 16-bit kernel code "
                    "here and bf16 is checked by the AOT compile test")
    q32, k32, labels, qu32 = _inputs(N, 64, n_labels=6, queue=30, separate_k=True)
    q, k = (t.detach().to(dtype).requires_grad_() for t in (q32, k32))
    loss, _, (dq, dk) = _run(q, k, labels, backend, queue=qu32.to(dtype), exclude_self=False)
    q_r, k_r = (t.detach().to(dtype).float().requires_grad_() for t in (q32, k32))  # same rounded values
    ref, _, (rq, rk) = _run(q_r, k_r, labels, "eager", queue=qu32.to(dtype).float(), exclude_self=False)
    assert dq.dtype == dk.dtype == dtype
    _assert_rel(loss.detach().float(), ref.detach(), 1e-2, "loss")
    _assert_rel(dq.float(), rq, 3e-2, "dq")
    _assert_rel(dk.float(), rk, 3e-2, "dk")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    """float64 gradcheck, same-set (exclude_self, k is q) and distinct-keys cases, both with a queue.

    The interpreter runs tl.dot in numpy, so float64 inputs work there, but the Triton kernels keep their
    running max/sum and the LSE/positive buffers in fp32 by design (no float64 GPU config is shipped): the
    loss is only fp32-accurate, so finite differences use eps=1e-3 and a 1e-3 tolerance for that backend.
    The chunked path computes in float64 and gets the strict default check.
    """
    q, k, labels, qu = _inputs(9, 3, n_labels=3, queue=4, separate_k=True, dtype=torch.float64)
    labels[:2] = 7  # a shared label; the rest random (some rows may lack a positive)
    same = lambda a, b: C.contrastive_loss(a, a, labels, queue=qu, tau=0.5, backend=backend) + 0 * b.sum()
    moco = lambda a, b: C.contrastive_loss(a, b, labels, queue=qu, tau=0.5, exclude_self=False,
                                           backend=backend)
    tol = dict(eps=1e-6, atol=1e-7) if backend == "chunked" else dict(eps=1e-3, atol=1e-3, rtol=1e-3)
    for fn in (same, moco):
        assert torch.autograd.gradcheck(fn, (q, k), **tol)


def test_chunked_path_with_many_tiles(monkeypatch):
    """A small tile forces many row/key/queue tiles, with the diagonal crossing tile borders."""
    monkeypatch.setattr(CC, "_TILE", 48)
    q, k, labels, qu = _inputs(300, 24, n_labels=40, queue=150)
    _check(q, k, labels, "chunked", queue=qu)


def test_default_dispatch_and_exclude_self_warning():
    q, k, labels, _ = _inputs(40, 16, n_labels=4, separate_k=True)
    assert C._pick_backend(q) == ("triton" if C._interpreted() else "chunked")
    assert C._pick_backend(q.double()) == "chunked" and C._pick_backend(torch.zeros(3, 300)) == "chunked"
    with pytest.warns(UserWarning, match="exclude_self"):
        C.contrastive_loss(q, k, labels)


@pytest.mark.parametrize("kwargs, field", [
    (dict(tau=0.0), "tau"), (dict(tau=50.0), "tau"), (dict(tau="0.1"), "tau"),
    (dict(q=torch.randn(8)), "q"), (dict(q=torch.zeros(8, 4, dtype=torch.long)), "q"),
    (dict(k=torch.randn(7, 4)), "k"), (dict(k=torch.randn(8, 4, dtype=torch.float64)), "k"),
    (dict(labels=torch.zeros(8)), "labels"), (dict(labels=torch.zeros(9, dtype=torch.long)), "labels"),
    (dict(queue=torch.randn(5, 3)), "queue"), (dict(backend="cuda"), "backend"),
])
def test_bad_arguments_name_the_argument(kwargs, field):
    args = dict(q=torch.randn(8, 4), k=None, labels=torch.zeros(8, dtype=torch.long))
    args.update({k: v for k, v in kwargs.items() if k in args})
    kw = {k: v for k, v in kwargs.items() if k not in args}
    k = args["q"] if args["k"] is None else args["k"]
    with pytest.raises(ValueError, match=rf"^{field}:"):
        C.contrastive_loss(args["q"], k, args["labels"], exclude_self=False, **kw)


@pytest.mark.slow
def test_every_shipped_config_compiles_for_sm80_and_sm90():
    """Real GPU code, not only interpreter code: PTX + cubin for each config and arch, with zero spills.

    24 compiles + ptxas -v: ~35 s with a warm Triton cache (~/.triton/cache), 1-2 min cold on 2 busy cores.
    """
    results = C.aot_compile_shipped(archs=(80, 90))
    assert len(results) == len(C.shipped_configs()) * 2
    for name, arch, res in results:
        target = "sm_90a" if arch == 90 else "sm_80"
        assert f".target {target}" in res.ptx and res.cubin[:4] == b"\x7fELF", (name, arch)
        assert res.spill_bytes == 0, f"{name} sm_{arch}: {res.spill_bytes} spill bytes"
