"""Ahead-of-time compilation of Triton kernels for real NVIDIA GPUs, with no GPU present.

Why: the test machine has no GPU, so kernels otherwise only ever run under ``TRITON_INTERPRET=1``.
Compiling what the launcher launches to PTX + cubin with ``triton.compile(..., target=GPUTarget(...))``
proves the kernel is real GPU code, and Triton's bundled ``ptxas -v`` tells us registers and spills (the CUDA
driver, which normally reports ``n_regs``/``n_spills``, is not available here).

:func:`aot_compile_launches` compiles the variant that runs: each :class:`~vpace_kernels.launch.Launch`
recorded on ``meta`` tensors goes through the JIT's own binder and argument packing (dtypes, 16-byte pointer
alignment, integer divisibility, ``== 1`` constants, launch options), then ``triton.compile`` as
``JITFunction.run`` does on a GPU. Those are Triton internals: where they moved, :class:`AotUnavailable` says
which one (tests skip with that reason); importing this module never touches them.

Interpreter mode replaces ``@triton.jit`` functions by interpreter objects that cannot be compiled, so for an
interpreted kernel the compile transparently runs in a child process without ``TRITON_INTERPRET`` (the kernel
must then be importable as ``module.qualname``, with this process's ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import re
import subprocess
import sys
import tempfile
from typing import Any

__all__ = ["AotResult", "AotUnavailable", "aot_compile", "aot_compile_launches", "ptxas_path"]

# Per-SM limits the occupancy estimate uses: registers, threads, resident blocks, shared memory (bytes; sm_80
# = A100 164 KB, sm_90 = H100/H200 228 KB), and the shared memory the driver reserves per block.
_SM_LIMITS = {80: (65536, 2048, 32, 167936), 90: (65536, 2048, 32, 233472)}
_RESERVED_SMEM = 1024


class AotUnavailable(RuntimeError):
    """This Triton's compiler internals differ from what ``aot.py`` drives; the message names the part."""


@dataclasses.dataclass(frozen=True)
class AotResult:
    """One compiled kernel variant for one GPU architecture."""

    name: str
    arch: int
    ptx: str
    cubin: bytes
    registers: int
    spill_bytes: int  # spill stores + spill loads, bytes, as reported by ptxas -v
    shared: int  # shared memory per block, bytes (Triton's metadata)
    num_warps: int
    num_stages: int

    @property
    def wgmma(self) -> bool:
        """Hopper's asynchronous warp-group MMA (sm_90a) is in the PTX."""
        return "wgmma.mma_async" in self.ptx

    @property
    def mma(self) -> bool:
        """The pre-Hopper warp-level tensor-core MMA (``mma.sync``) is in the PTX."""
        return "mma.sync" in self.ptx

    @property
    def blocks_per_sm(self) -> int:
        """Resident blocks per SM that registers, threads and shared memory allow (registers are allocated
        per warp in units of 256)."""
        regs, threads, blocks, smem = _SM_LIMITS.get(self.arch, _SM_LIMITS[90])
        per_warp = -(-self.registers * 32 // 256) * 256
        warps = self.num_warps
        by_regs = regs // (per_warp * warps) if self.registers else blocks
        return min(by_regs, threads // (32 * warps), blocks, smem // (self.shared + _RESERVED_SMEM))


def ptxas_path(arch: int) -> str:
    """Path of the ptxas that ships inside the triton wheel (the one Triton itself uses)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def _ptxas_stats(ptx: str, arch: int) -> tuple[int, int]:
    """Run ``ptxas -v`` on ``ptx`` and parse (registers, spill bytes) from its report."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [ptxas_path(arch), "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
               src, "-o", os.path.join(tmp, "k.cubin")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{arch}:\n{log}")
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"could not parse ptxas -v output for sm_{arch}:\n{log}")
    return int(regs.group(1)), int(spills.group(1)) + int(spills.group(2))


def _internals():
    """The Triton internals the JIT uses between a launch's arguments and ``triton.compile``."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        if not hasattr(JITFunction, "_pack_args"):
            raise AttributeError("JITFunction has no _pack_args")
    except (ImportError, AttributeError) as e:
        raise AotUnavailable(f"triton {_version()}: {type(e).__name__}: {e}") from e
    return triton, GPUTarget, ASTSource, make_backend, create_function_from_signature


def _version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "(not importable)"


def _finish(kernel, name: str, arch: int, num_warps: int, num_stages: int) -> AotResult:
    ptx = kernel.asm["ptx"]
    registers, spill_bytes = _ptxas_stats(ptx, arch)
    return AotResult(name=name, arch=arch, ptx=ptx, cubin=bytes(kernel.asm["cubin"]), registers=registers,
                     spill_bytes=spill_bytes, shared=int(kernel.metadata.shared), num_warps=num_warps,
                     num_stages=num_stages)


def _compile_signature(fn, job: dict) -> AotResult:
    """An explicit signature (no launch behind it): what a caller spells out is what compiles."""
    triton, GPUTarget, ASTSource, _, _ = _internals()
    src = ASTSource(fn=fn, signature=job["signature"], constexprs=job["constexprs"])
    arch = job["arch"]
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    return _finish(kernel, kernel.metadata.name, arch, job["num_warps"], job["num_stages"])


def _compile_launch(fn, job: dict) -> AotResult:
    """A recorded launch through the JIT's binder and ``_pack_args`` (``JITFunction.run``'s steps)."""
    triton, GPUTarget, ASTSource, make_backend, create_function_from_signature = _internals()
    target = GPUTarget("cuda", job["arch"], 32)
    args = [_rebuild(a) for a in job["args"]]
    kwargs = dict(job["kwargs"])
    knobs = getattr(triton, "knobs", None)
    kwargs["debug"] = kwargs.get("debug", getattr(fn, "debug", None)) or bool(
        knobs and knobs.runtime.debug)
    if knobs is not None and hasattr(getattr(knobs, "compilation", None), "instrumentation_mode"):
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    try:
        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    except (AttributeError, TypeError) as e:
        raise AotUnavailable(f"triton {triton.__version__}: the JIT's argument binding changed: "
                             f"{type(e).__name__}: {e}") from e
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                            options=options.__dict__)
    return _finish(kernel, job["name"], job["arch"], options.num_warps, options.num_stages)


@dataclasses.dataclass(frozen=True)
class _TensorArg:
    """A tensor argument as the JIT sees it: its dtype and its address modulo 16 (the alignment)."""

    dtype: str
    misalign: int  # data_ptr() % 16, bytes


def _describe(arg: Any) -> Any:
    import torch

    if isinstance(arg, torch.Tensor):
        return _TensorArg(str(arg.dtype).removeprefix("torch."), arg.data_ptr() % 16)
    return arg


def _rebuild(arg: Any) -> Any:
    """A ``meta`` tensor with the described dtype and alignment (the JIT reads only those two)."""
    if not isinstance(arg, _TensorArg):
        return arg
    import torch

    dtype = getattr(torch, arg.dtype)
    size = torch.empty((), dtype=dtype).element_size()
    offset = arg.misalign // size
    return torch.empty(offset + 1, dtype=dtype, device="meta")[offset:]


def _run_jobs(fn, jobs: list[dict]) -> list[AotResult]:
    """Compile ``jobs`` of one kernel here, or in a child process if ``fn`` is an interpreter object."""
    from .utils import interpreted  # (not at import: the compile child process then skips torch)

    if not interpreted(fn):
        return [(_compile_launch if job["kind"] == "launch" else _compile_signature)(fn, job) for job in jobs]
    py_fn = getattr(fn, "fn", fn)
    module, qualname = py_fn.__module__, py_fn.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        raise ValueError(f"fn: {qualname!r} must be a module-level kernel to AOT-compile under "
                         "TRITON_INTERPRET")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out = os.path.join(tmp, "job.pkl"), os.path.join(tmp, "result.pkl")
        with open(job_path, "wb") as f:
            pickle.dump(dict(module=module, qualname=qualname, jobs=jobs, out=out), f)
        code = f"from {__package__}.aot import _child_main; _child_main({job_path!r})"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if proc.returncode == 3:
            raise AotUnavailable(proc.stderr.strip().splitlines()[-1])
        if proc.returncode != 0:
            raise RuntimeError(f"AOT compile of {module}.{qualname} failed:\n{proc.stderr}")
        with open(out, "rb") as f:
            return pickle.load(f)


def aot_compile(fn, signature: dict[str, str], constexprs: dict[str, Any], *, arch: int = 90,
                num_warps: int = 4, num_stages: int = 3) -> AotResult:
    """Compile ``fn`` (a ``@triton.jit`` kernel) for ``sm_<arch>`` from an explicit signature.

    ``signature`` maps every argument name to a Triton type (``"*fp32"``, ``"i32"``, ``"constexpr"``...);
    ``constexprs`` gives the value of each constexpr argument. No specialisation hints are added: for what a
    launch compiles, use :func:`aot_compile_launches`.
    """
    missing = [k for k, v in signature.items() if v == "constexpr" and k not in constexprs]
    if missing:
        raise ValueError(f"constexprs: no value for constexpr argument(s) {missing}")
    job = dict(kind="signature", signature=dict(signature), constexprs=dict(constexprs), arch=int(arch),
               num_warps=int(num_warps), num_stages=int(num_stages))
    return _run_jobs(fn, [job])[0]


def aot_compile_launches(launches: list, archs: tuple[int, ...] = (90,)) -> list[tuple[Any, int, AotResult]]:
    """Compile recorded launches (``vpace_kernels.launch.recording``) for each arch exactly as the JIT would
    at that launch: ``[(launch, arch, AotResult)]``. One child process per kernel function, two at a time.

    A launch recorded for one arch is compiled only for that arch (its tiles were chosen for it): record once
    per arch and pass ``archs=(arch,)``.
    """
    from concurrent.futures import ThreadPoolExecutor

    groups: dict = {}
    for rec in launches:
        for arch in archs:
            groups.setdefault(rec.fn, []).append((rec, arch))

    def compile_group(fn):
        jobs = [dict(kind="launch", name=rec.name, arch=arch, args=[_describe(a) for a in rec.args],
                     kwargs=dict(rec.kwargs)) for rec, arch in groups[fn]]
        return [(rec, arch, res) for (rec, arch), res in zip(groups[fn], _run_jobs(fn, jobs), strict=True)]

    _internals()  # fail early, with the reason, where this Triton's internals moved
    with ThreadPoolExecutor(2) as pool:
        return [row for rows in pool.map(compile_group, list(groups)) for row in rows]


def _child_main(job_path: str) -> None:
    """Entry point of the child process: compile the jobs pickled at ``job_path`` (exit 3: unavailable)."""
    import triton

    if hasattr(triton, "knobs"):
        triton.knobs.runtime.interpret = False  # even if the kernel's module sets TRITON_INTERPRET on import
    with open(job_path, "rb") as f:
        spec = pickle.load(f)
    obj: Any = importlib.import_module(spec["module"])
    for part in spec["qualname"].split("."):
        obj = getattr(obj, part)
    try:
        results = [(_compile_launch if job["kind"] == "launch" else _compile_signature)(obj, job)
                   for job in spec["jobs"]]
    except AotUnavailable as e:
        print(f"AotUnavailable: {e}", file=sys.stderr)
        sys.exit(3)
    with open(spec["out"], "wb") as f:
        pickle.dump(results, f)
