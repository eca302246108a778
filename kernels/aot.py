"""Ahead-of-time compilation of Triton kernels for real NVIDIA GPUs, with no GPU present.

Why: the test machine has no GPU, so kernels otherwise only ever run under ``TRITON_INTERPRET=1``.
Compiling every shipped config to PTX + cubin with ``triton.compile(ASTSource(...), target=GPUTarget(...))``
proves the kernel is real GPU code, and Triton's bundled ``ptxas -v`` tells us registers and spills
(the CUDA driver, which normally reports ``n_regs``/``n_spills``, is not available here).

Interpreter mode replaces ``@triton.jit`` functions by interpreter objects that cannot be compiled, so for an
interpreted kernel :func:`aot_compile` transparently re-runs itself in a child process without
``TRITON_INTERPRET`` (the kernel must then be importable as ``module.qualname``, with this process's
``sys.path``).
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

__all__ = ["AotResult", "aot_compile", "aot_compile_configs", "aot_compile_many", "ptxas_path"]


@dataclasses.dataclass(frozen=True)
class AotResult:
    """One compiled kernel config for one GPU architecture."""

    name: str
    arch: int
    ptx: str
    cubin: bytes
    registers: int
    spill_bytes: int  # spill stores + spill loads, bytes, as reported by ptxas -v
    shared: int  # static shared memory, bytes (Triton's metadata)
    num_warps: int
    num_stages: int


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


def _compile_here(fn, signature: dict, constexprs: dict, arch: int, num_warps: int,
                  num_stages: int) -> AotResult:
    import triton
    from triton.backends.compiler import GPUTarget

    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = kernel.asm["ptx"]
    registers, spill_bytes = _ptxas_stats(ptx, arch)
    return AotResult(name=kernel.metadata.name, arch=arch, ptx=ptx, cubin=bytes(kernel.asm["cubin"]),
                     registers=registers, spill_bytes=spill_bytes, shared=int(kernel.metadata.shared),
                     num_warps=num_warps, num_stages=num_stages)


def _compile_in_child(fn, jobs: list[dict]) -> list[AotResult]:
    py_fn = getattr(fn, "fn", fn)
    module, qualname = py_fn.__module__, py_fn.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        raise ValueError(f"fn: {qualname!r} must be a module-level kernel to AOT-compile "
                         "under TRITON_INTERPRET")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out = os.path.join(tmp, "job.pkl"), os.path.join(tmp, "result.pkl")
        with open(job_path, "wb") as f:
            pickle.dump(dict(module=module, qualname=qualname, jobs=jobs, out=out), f)
        code = f"from {__package__}.aot import _child_main; _child_main({job_path!r})"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"AOT compile of {module}.{qualname} failed:\n{proc.stderr}")
        with open(out, "rb") as f:
            return pickle.load(f)


def aot_compile_many(fn, jobs: list[dict]) -> list[AotResult]:
    """Compile several variants of one kernel; each job holds :func:`aot_compile`'s arguments.

    For an interpreted kernel all jobs share one child process (importing torch + triton costs seconds).
    """
    norm = []
    for job in jobs:
        sig, consts = dict(job["signature"]), dict(job.get("constexprs", {}))
        missing = [k for k, v in sig.items() if v == "constexpr" and k not in consts]
        if missing:
            raise ValueError(f"constexprs: no value for constexpr argument(s) {missing}")
        norm.append(dict(signature=sig, constexprs=consts, arch=int(job.get("arch", 90)),
                         num_warps=int(job.get("num_warps", 4)), num_stages=int(job.get("num_stages", 3))))
    from .utils import interpreted  # (not at import: the compile child process then skips torch)

    if interpreted(fn):
        return _compile_in_child(fn, norm)
    return [_compile_here(fn, **job) for job in norm]


def aot_compile(fn, signature: dict[str, str], constexprs: dict[str, Any], *, arch: int = 90,
                num_warps: int = 4, num_stages: int = 3) -> AotResult:
    """Compile ``fn`` (a ``@triton.jit`` kernel) for ``sm_<arch>`` and report registers/spills.

    ``signature`` maps every argument name to a Triton type (``"*fp32"``, ``"i32"``, ``"constexpr"``...);
    ``constexprs`` gives the value of each constexpr argument. Works without a GPU, and for kernels built by
    the interpreter (the compile then runs in a child process).
    """
    job = dict(signature=signature, constexprs=constexprs, arch=arch, num_warps=num_warps,
               num_stages=num_stages)
    return aot_compile_many(fn, [job])[0]


def aot_compile_configs(configs: list[dict], archs: tuple[int, ...] = (80, 90)) -> list[tuple[str, int, Any]]:
    """Compile a kernel module's ``shipped_configs()`` for each arch: ``[(config name, arch, AotResult)]``.

    One ``aot_compile_many`` per kernel function, two at a time (for interpreted kernels each is a child
    process).
    """
    from concurrent.futures import ThreadPoolExecutor

    groups: dict = {}
    for cfg in configs:
        for arch in archs:
            groups.setdefault(cfg["fn"], []).append((cfg, arch))

    def compile_group(fn):
        jobs = [dict(signature=c["signature"], constexprs=c["constexprs"], arch=a, num_warps=c["num_warps"],
                     num_stages=c["num_stages"]) for c, a in groups[fn]]
        return [(c["name"], a, r) for (c, a), r in zip(groups[fn], aot_compile_many(fn, jobs), strict=True)]

    with ThreadPoolExecutor(2) as pool:
        return [row for rows in pool.map(compile_group, list(groups)) for row in rows]


def _child_main(job_path: str) -> None:
    """Entry point of the child process: compile the jobs pickled at ``job_path``."""
    import triton

    triton.knobs.runtime.interpret = False  # even if the kernel's module sets TRITON_INTERPRET on import
    with open(job_path, "rb") as f:
        spec = pickle.load(f)
    obj: Any = importlib.import_module(spec["module"])
    for part in spec["qualname"].split("."):
        obj = getattr(obj, part)
    results = [_compile_here(obj, **job) for job in spec["jobs"]]
    with open(spec["out"], "wb") as f:
        pickle.dump(results, f)
