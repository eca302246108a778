"""AOT compilation for real GPUs without a GPU: PTX + cubin come back, ptxas -v is parsed.

Without CUDA conftest turns Triton's interpreter on, so the kernel below is an interpreted object and
``aot_compile`` compiles it in a child process (the path the kernel modules' AOT tests take too); with CUDA it
compiles in this process.
"""

import pytest
import triton
import triton.language as tl

from vpace_kernels.aot import AotResult, aot_compile


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, alpha * x + y, mask=mask)


SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "alpha": "fp32",
       "BLOCK": "constexpr"}


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


def test_missing_constexpr_is_named():
    with pytest.raises(ValueError, match="BLOCK"):
        aot_compile(_axpy_kernel, SIG, {}, arch=80)
