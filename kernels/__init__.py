"""Triton kernels with fast CPU paths and eager references (imports nothing of vpace).

One layout per kernel ``<op>``: ``<op>_spec.py`` the contract every version imports (argument records, op
codes, backends, validation), ``<op>.py`` the API (``<op>(..., backend=None)``, ``pick_backend``), the Triton
kernel, its launcher, autograd and the eager reference, plus ``shipped_launches(arch)`` (what it launches for
the shipped shapes, recorded on ``meta`` tensors) for ``aot.py``; ``<op>_cpu.py`` the fast CPU path;
``launch.py`` how every kernel is launched (under its tensors' device guard; recorded on ``meta``);
``utils.py`` what all share (is Triton's interpreter on, dtype names).

Submodules are imported explicitly (``from vpace_kernels.pace_jitter import pace_jitter``) so that importing
the package stays cheap and ``TRITON_INTERPRET`` can still be set before Triton is first imported.
"""
