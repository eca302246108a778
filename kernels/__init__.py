"""Triton kernels with fast CPU paths and eager references (imports nothing of vpace).

Submodules are imported explicitly (``from vpace_kernels.pace_jitter import pace_jitter``) so that
importing the package stays cheap and ``TRITON_INTERPRET`` can still be set before Triton is first imported.
"""
