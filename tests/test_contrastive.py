"""Fused contrastive loss: Triton and chunked paths vs the eager full-logits reference, on every device.

On CPU the Triton kernels run in Triton's interpreter (conftest); with CUDA they run compiled, and a CUDA-only
sweep takes N from 7 to 65536 at D 128 and 256 in fp32 and bf16.
"""

import pytest
import torch
from conftest import DEVICES, HAS_CUDA, INTERPRETED, NO_CUDA, on_devices
from test_aot import aot_or_skip

from benchmarks.gpu_check import TWO_GPUS
from vpace_kernels import contrastive as C
from vpace_kernels import contrastive_cpu as CC

BACKENDS = on_devices(cpu=("triton", "chunked"), cuda=("triton", "chunked"))
N = 70  # not a multiple of any shipped tile (16/32/64), > 64: every kernel loops over several tiles


def _inputs(n, d, *, n_labels, queue=0, separate_k=False, dtype=torch.float32, seed=0, device="cpu"):
    """Seeded on the CPU (the same values on every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=dtype).to(device).requires_grad_()
    k = torch.randn(n, d, generator=g, dtype=dtype).to(device).requires_grad_() if separate_k else q
    labels = torch.randint(0, n_labels, (n,), generator=g).to(device)
    qu = torch.randn(queue, d, generator=g, dtype=dtype).to(device) if queue else None
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


@pytest.mark.parametrize("device, backend", BACKENDS)
@pytest.mark.parametrize("d", [16, 128, 130])
@pytest.mark.parametrize("case", ["simclr", "simclr+queue", "moco", "unique"])
def test_matches_eager_reference(device, backend, d, case):
    if case == "simclr":  # q = k, duplicate labels (several clips per video)
        q, k, labels, qu = _inputs(N, d, n_labels=12, device=device)
    elif case == "simclr+queue":
        q, k, labels, qu = _inputs(N, d, n_labels=9, queue=45, device=device)
    elif case == "moco":  # RSPNet A-VID: distinct positive keys (labels = arange), queue negatives only
        q, k, labels, qu = _inputs(N, d, n_labels=1, queue=45, separate_k=True, device=device)
        labels = torch.arange(N, device=device)
    else:  # all-unique labels except one pair: with exclude_self only rows 0 and 1 have a positive
        q, k, labels, qu = _inputs(N, d, n_labels=1, device=device)
        labels = torch.arange(N, device=device)
        labels[1] = 0
    _, stats = _check(q, k, labels, backend, queue=qu, tau=0.1 if d == 16 else 0.07)
    if case == "unique":
        assert (int(stats.rows_used), int(stats.rows_without_positive)) == (2, N - 2)
    if case == "moco":
        assert int(stats.rows_without_positive) == 0


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_mixed_rows_without_positive_are_counted(device, backend):
    q, k, labels, qu = _inputs(N, 32, n_labels=20, queue=10, seed=3, device=device)
    labels[:7] = 1000 + torch.arange(7)  # 7 labels that occur exactly once
    counts = torch.bincount(torch.unique(labels, return_inverse=True)[1])
    singletons = int((counts == 1).sum())
    _, stats = _check(q, k, labels, backend, queue=qu, normalize=False, tau=2.0)
    assert int(stats.rows_without_positive) == singletons >= 7
    assert int(stats.rows) == N


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_no_positive_anywhere_gives_zero_loss_and_grad(device, backend):
    q, k, labels, qu = _inputs(37, 16, n_labels=1, queue=5, device=device)
    labels = torch.arange(37, device=device)
    loss, stats, (dq,) = _run(q, q, labels, backend, queue=qu)
    assert loss.item() == 0.0 and torch.equal(dq, torch.zeros_like(dq))
    assert int(stats.rows_without_positive) == 37 and int(stats.rows_used) == 0


@pytest.mark.parametrize("device, backend", BACKENDS)
def test_frozen_keys_get_no_grad(device, backend):
    q, k, labels, qu = _inputs(N, 130, n_labels=5, queue=20, separate_k=True, device=device)
    k = k.detach()
    _check(q, k, labels, backend, queue=qu, exclude_self=False)


@pytest.mark.parametrize("device, backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(device, backend, dtype):
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter keeps bf16 as uint16 and tl.dot multiplies the bit patterns "
                    "(triton-lang/triton#11584, unsupported upstream); fp16 runs the same 16-bit kernel code "
                    "here, bf16 runs compiled on CUDA and in the AOT compile test")
    q32, k32, labels, qu32 = _inputs(N, 64, n_labels=6, queue=30, separate_k=True, device=device)
    _check_half(q32, k32, labels, qu32, backend, dtype)


def _check_half(q32, k32, labels, qu32, backend, dtype, exclude_self=False):
    """``backend`` on ``dtype`` inputs vs eager in fp32 on the same rounded values: 16-bit tolerances."""
    q = q32.detach().to(dtype).requires_grad_()
    k = q if k32 is q32 else k32.detach().to(dtype).requires_grad_()
    qu = None if qu32 is None else qu32.to(dtype)
    loss, _, grads = _run(q, k, labels, backend, queue=qu, exclude_self=exclude_self)
    q_r = q.detach().float().requires_grad_()
    k_r = q_r if k is q else k.detach().float().requires_grad_()
    ref, _, ref_grads = _run(q_r, k_r, labels, "eager", queue=None if qu is None else qu.float(),
                             exclude_self=exclude_self)
    assert all(g.dtype == dtype for g in grads)
    _assert_rel(loss.detach().float(), ref.detach(), 1e-2, "loss")
    for name, g, rg in zip("qk", grads, ref_grads, strict=False):
        _assert_rel(g.float(), rg, 3e-2, f"d{name}")


@pytest.mark.parametrize("device, backend", on_devices(cpu=("triton", "chunked"), cuda=("chunked",)))
def test_gradcheck_float64(device, backend):
    """float64 gradcheck, same-set (exclude_self, k is q) and distinct-keys cases, both with a queue.

    The interpreter runs tl.dot in numpy, so float64 inputs work there, but the Triton kernels keep their
    running max/sum and the LSE/positive buffers in fp32 by design (no float64 GPU config is shipped; on CUDA
    float64 goes to the chunked path): the loss is only fp32-accurate, so finite differences use eps=1e-3 and
    a 1e-3 tolerance for that backend. The chunked path computes in float64 and gets the strict default check.
    """
    q, k, labels, qu = _inputs(9, 3, n_labels=3, queue=4, separate_k=True, dtype=torch.float64, device=device)
    labels[:2] = 7  # a shared label; the rest random (some rows may lack a positive)
    same = lambda a, b: C.contrastive_loss(a, a, labels, queue=qu, tau=0.5, backend=backend) + 0 * b.sum()
    moco = lambda a, b: C.contrastive_loss(a, b, labels, queue=qu, tau=0.5, exclude_self=False,
                                           backend=backend)
    tol = dict(eps=1e-6, atol=1e-7) if backend == "chunked" else dict(eps=1e-3, atol=1e-3, rtol=1e-3)
    for fn in (same, moco):
        assert torch.autograd.gradcheck(fn, (q, k), **tol)


def test_chunked_path_with_many_tiles(monkeypatch):
    """A small tile forces many row/key/queue tiles, with the diagonal crossing tile borders."""
    monkeypatch.setattr(CC, "TILE", 48)
    q, k, labels, qu = _inputs(300, 24, n_labels=40, queue=150)
    _check(q, k, labels, "chunked", queue=qu)


@pytest.mark.parametrize("device", DEVICES)
def test_default_dispatch_and_exclude_self_warning(device):
    q, k, labels, _ = _inputs(40, 16, n_labels=4, separate_k=True, device=device)
    assert C.pick_backend(q) == ("triton" if device == "cuda" or INTERPRETED else "chunked")
    assert C.pick_backend(q.double()) == "chunked"
    assert C.pick_backend(torch.zeros(3, C.MAX_TRITON_DIM + 1, device=device)) == "chunked"
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


# ----------------------------------------------------------------------------------- CUDA: large N sweep
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("n", [7, 1000, 4097, 16384, 65536])
@pytest.mark.parametrize("device, backend", on_devices(cpu=(), cuda=("triton",)))
def test_large_n_forward_backward(device, backend, n, d, dtype):
    """SimCLR pairs (label = row // 2; odd N leaves a row without positive) plus a queue, forward + backward.

    Up to N = 16384 against the eager full-logits reference on the same rounded inputs; at N = 65536 the
    N x N logits would take tens of GB per tensor, so the reference is the chunked path in float64 (itself
    checked against eager above)."""
    q, k, labels, qu = _inputs(n, d, n_labels=1, queue=min(n, 4096), device=device)
    labels = torch.arange(n, device=device) // 2
    if n <= 16384:
        if dtype == torch.float32:
            _check(q, k, labels, backend, queue=qu)
        else:
            _check_half(q, k, labels, qu, backend, dtype, exclude_self=True)
        return
    qd = q.detach().to(dtype).requires_grad_()
    loss, _, (dq,) = _run(qd, qd, labels, backend, queue=qu.to(dtype))
    q64 = qd.detach().double().requires_grad_()
    ref, _, (rq,) = _run(q64, q64, labels, "chunked", queue=qu.to(dtype).double())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    _assert_rel(loss.detach(), ref.detach(), tol / 3, "loss")
    _assert_rel(dq, rq, tol, "dq")


@pytest.mark.parametrize("device, backend", on_devices(cpu=("triton",), cuda=("triton",)))
def test_fp16_backward_at_large_n_is_at_the_input_rounding_error(device, backend, monkeypatch):
    """fp16 at N = 4096, two clips per video: p_ij and w_i are both ~1/N, so an unscaled ds = w p underflows
    fp16's normal range before the second dot (measured 6.9e-3 of max |grad| at D = 128). Scaled, the error
    against fp64 on the unrounded inputs is that of rounding the inputs to fp16 plus one fp16 ulp of the
    output. Normalised inputs, normalize=False: the kernel's gradient alone, not the fp16 L2 normalisation's.
    The interpreter runs 1024-row tiles (its cost is per op: ~6 s instead of minutes)."""
    if device == "cpu":
        monkeypatch.setitem(C._TILES, 80, {k: (1024, 1024, 4, 2) if k[1] == "16" else v
                                           for k, v in C._TILES[80].items()})
    n, d = 4096, 128
    y64 = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64), dim=1).to(device)
    labels = torch.arange(n, device=device) // 2

    def grad(y, b):
        y = y.detach().requires_grad_()
        C.contrastive_loss(y, y, labels, normalize=False, backend=b).backward()
        return y.grad.double()

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    exact = grad(y64, "eager")
    input_rounding = rel(grad(y64.half().double(), "eager"), exact)
    got = grad(y64.half(), backend)
    assert rel(got, exact) <= input_rounding + torch.finfo(torch.float16).eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.skipif(not INTERPRETED, reason="the interpreter runs any tile here; on CUDA the GPU's own run")
def test_hopper_tiles_under_the_interpreter(monkeypatch, d, dtype):
    """sm_90's tiles (64-row warp-group tiles, split output columns) give the reference's results: the same
    kernels with sm_90's configs, run by the interpreter at N = 70 (several tiles, partial last ones)."""
    monkeypatch.setattr(C, "target_arch", lambda device: 90)
    q32, k32, labels, qu32 = _inputs(N, d, n_labels=6, queue=30, separate_k=True)
    if dtype == torch.float32:
        _check(q32, k32, labels, "triton", queue=qu32, exclude_self=False)
    else:
        _check_half(q32, k32, labels, qu32, "triton", dtype)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=TWO_GPUS if HAS_CUDA else NO_CUDA)
def test_launches_on_the_tensors_device():
    """Tensors on cuda:1 while cuda:0 is current (a notebook, a multi-GPU process): the kernels run on cuda:1
    (under its device guard), not on Triton's current device, and match eager there."""
    torch.cuda.set_device(0)
    q, k, labels, qu = _inputs(300, 128, n_labels=50, queue=64, separate_k=True, device="cuda:1")
    _check(q, k, labels, "triton", queue=qu, exclude_self=False)
    assert torch.cuda.current_device() == 0


def _tile_rows(rec) -> int:
    """The M of the launch's dots: query rows per program (fwd, dq), key rows (dk)."""
    return rec.kwargs["BLOCK_N" if rec.name.startswith("[dk") else "BLOCK_M"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_launched_variants_compile_for_sm80_and_sm90(arch):
    """Real GPU code of what runs: every launch forward + backward makes for the shipped D (128, 256) in fp32
    and bf16, recorded on meta tensors and compiled with the JIT's own specialisation, gives PTX + cubin with
    zero spills. On sm_90 the bf16 launches use 64-row warp-group tiles that emit wgmma and fit 2 blocks per
    SM, as does every fp32 launch whose dot has 64 rows.

    12 compiles + ptxas -v per arch: ~35 s with a warm Triton cache (~/.triton/cache), 1-2 min cold.
    """
    launches = C.shipped_launches(arch)
    assert len(launches) == 2 * 2 * 3  # D x dtype x (fwd, dq, dk)
    for rec, _, res in aot_or_skip(launches, arch):
        target = "sm_90a" if arch == 90 else "sm_80"
        assert f".target {target}" in res.ptx and res.cubin[:4] == b"\x7fELF", rec.name
        assert res.spill_bytes == 0, f"{rec.name} sm_{arch}: {res.spill_bytes} spill bytes"
        assert res.num_warps == rec.kwargs["num_warps"] and res.num_stages == rec.kwargs["num_stages"]
        if arch == 90:
            assert res.blocks_per_sm >= 2, (rec.name, res.registers, res.shared)
            if "bf16" in rec.name:
                assert _tile_rows(rec) >= 64, rec.name
            assert res.wgmma == (_tile_rows(rec) >= 64) and res.mma != res.wgmma, rec.name
