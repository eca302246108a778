"""Triton kernels with fast CPU paths and eager references (imports nothing of vpace).

One layout per kernel ``<op>``: ``<op>_spec.py`` the contract every version imports (argument records, op
codes, backends, validation), ``<op>.py`` the API (``<op>(..., backend=None)``, ``pick_backend``), the Triton
kernel, its launcher, autograd and the eager reference, plus ``shipped_configs()`` for ``aot.py``;
``<op>_cpu.py`` the fast CPU path; ``utils.py`` what both share (is Triton's interpreter on, dtype names).

Submodules are imported explicitly (``from vpace_kernels.pace_jitter import pace_jitter``) so that importing
the package stays cheap and ``TRITON_INTERPRET`` can still be set before Triton is first imported.
"""
