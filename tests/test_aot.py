"""AOT compilation for real GPUs without a GPU: PTX + cubin come back, ptxas -v is parsed, and a recorded
launch compiles to what the JIT would compile at that launch.

Without CUDA conftest turns Triton's interpreter on, so the kernel below is an interpreted object and the
compile runs in a child process (the path the kernel modules' AOT tests take too); with CUDA it compiles in
this process.
"""

import pytest
import torch
import triton
import triton.language as tl
from conftest import needs_cuda

from vpace_kernels.aot import AotResult, AotUnavailable, aot_compile, aot_compile_launches
from vpace_kernels.launch import Launch, launch, recording


def aot_or_skip(launches: list, arch: int) -> list:
    """``aot_compile_launches`` for one arch, or a skip with the reason if this Triton's internals moved."""
    try:
        return aot_compile_launches(launches, archs=(arch,))
    except AotUnavailable as e:
        pytest.skip(f"AOT compile unavailable: {e}")


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, alpha * x + y, mask=mask)


SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "alpha": "fp32",
       "BLOCK": "constexpr"}


def _axpy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The kernel's launch path: the way the shipped kernels launch (a record, the tensors' device)."""
    out = torch.empty_like(x)
    n = x.numel()
    launch(Launch("[axpy]", _axpy_kernel, (triton.cdiv(n, 1024),), (x, y, out, n, 2.0),
                  dict(BLOCK=1024, num_warps=4)), x.device)
    return out


@pytest.mark.parametrize("arch", [80, 90])
def test_trivial_kernel_compiles(arch):
    res = aot_compile(_axpy_kernel, SIG, {"BLOCK": 256}, arch=arch, num_warps=4)
    assert isinstance(res, AotResult)
    assert res.arch == arch and res.name.startswith("_axpy_kernel")
    assert ".entry _axpy_kernel" in res.ptx
    target = "sm_90a" if arch == 90 else f"sm_{arch}"
    assert f".target {target}" in res.ptx
    assert res.cubin[:4] == b"\x7fELF"  # a real CUDA ELF binary
    assert 0 < res.registers <= 255
    assert res.spill_bytes == 0
    assert not res.wgmma and not res.mma and res.blocks_per_sm == 2048 // (32 * 4)


def test_missing_constexpr_is_named():
    with pytest.raises(ValueError, match="BLOCK"):
        aot_compile(_axpy_kernel, SIG, {}, arch=80)


def test_a_launch_compiles_with_the_jits_specialisation():
    """16-byte aligned pointers and a 16-divisible length: the JIT's hints make the loads 16-byte vectors.
    The same launch on a tensor one element off alignment, or with a length of 4097, compiles without them,
    and so does the bare signature (no hints): the AOT result follows the launch's arguments, as the JIT."""
    def record(offset: int, n: int) -> Launch:
        x = torch.empty(n + offset, device="meta")[offset:]
        with recording(90) as launches:
            _axpy(x, torch.empty(n, device="meta"))
        (rec,) = launches
        return rec

    recs = [record(0, 4096), record(1, 4096), record(0, 4097)]
    ptx = [res.ptx for _, _, res in aot_or_skip(recs, 90)]
    vector = "ld.global.v4.b32"  # (BLOCK 1024 over 128 threads: 8 floats each, two 16-byte loads)
    assert vector in ptx[0]
    assert ptx[1].count(vector) < ptx[0].count(vector) and vector not in ptx[2]
    assert vector not in aot_compile(_axpy_kernel, SIG, {"BLOCK": 1024}, arch=90).ptx


def test_moved_internals_are_a_reason_not_an_error(monkeypatch):
    """A Triton whose JIT lost a part the AOT path drives: a clear AotUnavailable naming it (tests skip with
    it); importing the kernels and running them is unaffected."""
    from triton.runtime.jit import JITFunction

    monkeypatch.delattr(JITFunction, "_pack_args")
    with recording(90) as launches:
        _axpy(torch.empty(64, device="meta"), torch.empty(64, device="meta"))
    with pytest.raises(AotUnavailable, match="_pack_args"):
        aot_compile_launches(launches)
    import vpace_kernels.contrastive  # noqa: F401
    import vpace_kernels.pace_jitter  # noqa: F401


def test_meta_launches_outside_a_recording_are_refused():
    with pytest.raises(RuntimeError, match="recording"):
        _axpy(torch.empty(8, device="meta"), torch.empty(8, device="meta"))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_aot_of_a_recorded_launch_is_the_jits_kernel(device):
    """On a GPU: the kernel the JIT compiled for a real launch and the AOT compile of the same launch recorded
    on meta tensors (for this GPU's arch) are the same PTX."""
    from vpace_kernels.launch import target_arch

    x, y = torch.randn(4096, device=device), torch.randn(4096, device=device)
    torch.testing.assert_close(_axpy(x, y), 2.0 * x + y)
    jit = [k for k in _axpy_kernel.device_caches[torch.cuda.current_device()][0].values()]
    arch = target_arch(x.device)
    with recording(arch) as launches:
        _axpy(torch.empty(4096, device="meta"), torch.empty(4096, device="meta"))
    (_, _, res), = aot_or_skip(launches, arch)
    assert any(k.asm["ptx"] == res.ptx for k in jit)
