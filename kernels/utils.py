"""What every kernel shares: whether Triton runs in its interpreter, Triton's dtype names, error wording."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["TRITON_DTYPES", "interpreted", "triton_can_run", "describe"]

# torch dtype -> the name Triton signatures use ("*bf16" is a pointer to bf16).
TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def interpreted(*kernels) -> bool:
    """True when Triton runs ``kernels`` (``@triton.jit`` functions) in its CPU interpreter.

    That needs ``TRITON_INTERPRET=1`` set before triton was first imported: triton.language's own @jit helpers
    (``tl.sum`` ...) are decorated at that import and must be interpreted objects too, so both are checked.
    """
    return not any(isinstance(f, triton.runtime.JITFunction) for f in (*kernels, tl.sum))


def triton_can_run(t: torch.Tensor, *kernels) -> bool:
    """Triton kernels run compiled on CUDA tensors, and on CPU tensors only under the interpreter."""
    return t.is_cuda or interpreted(*kernels)


def describe(x) -> str:
    """``dtype tensor of shape (...)`` or the type name: what an argument error says the caller passed."""
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
