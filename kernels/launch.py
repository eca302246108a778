"""How every Triton kernel here is launched: a :class:`Launch` record, run under its tensors' device guard.

Why records: the launch path of each op (argument checks, packing, allocation, the launches themselves) also
runs on ``meta`` tensors, which hold no data. There each launch is recorded, not run (:func:`recording`).
That proves the path never reads a device value (a meta tensor has none to read, so any ``.item()``,
``bool()`` or device-to-host copy raises), and it hands ``aot.py`` the exact arguments the JIT specialises on
(dtypes, 16-byte pointer alignment, integer divisibility) for the shapes the project ships.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["PLANNING_ARCH", "Launch", "launch", "recording", "sm_count", "target_arch", "to_device"]

PLANNING_ARCH = 90  # the GPU a recording plans for unless told otherwise (H100/H200: sm_90)
_PLANNING_SMS = {80: 108, 90: 132}  # SMs of an A100 / an H100 SXM: the grid a recording plans for
_RECORDING: contextvars.ContextVar[tuple[list, int] | None] = contextvars.ContextVar("vpace_launches",
                                                                                      default=None)


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch: ``fn[grid](*args, **kwargs)``; ``name`` labels its config in AOT rows."""

    name: str
    fn: Any
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def recording(arch: int = PLANNING_ARCH) -> Iterator[list[Launch]]:
    """Within it, launches on ``meta`` tensors are appended to the yielded list, planned for ``sm_<arch>``."""
    token = _RECORDING.set(([], arch))
    try:
        yield _RECORDING.get()[0]
    finally:
        _RECORDING.reset(token)


def target_arch(device: torch.device) -> int:
    """Compute capability as ``10 * major + minor`` of the GPU a launch on ``device`` targets: the device's on
    CUDA, the recording's on ``meta``, 0 elsewhere (Triton's CPU interpreter)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)  # cached properties: no sync
        return 10 * major + minor
    rec = _RECORDING.get()
    return rec[1] if device.type == "meta" and rec is not None else 0


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors a grid on ``device`` should fill (elsewhere: the planned GPU's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _PLANNING_SMS.get(target_arch(device), _PLANNING_SMS[PLANNING_ARCH])


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` in one non-blocking copy from pinned memory: no host sync on CUDA (the
    caching host allocator keeps the pinned block until the copy is done)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def launch(rec: Launch, device: torch.device) -> None:
    """Run ``rec`` on ``device``'s GPU (not Triton's current one: tensors on cuda:1 while cuda:0 is current
    would fault or race), record it on ``meta``, or run it under the interpreter on CPU tensors."""
    if device.type == "meta":
        if (state := _RECORDING.get()) is None:
            raise RuntimeError(f"{rec.name}: meta tensors are only planned for, inside launch.recording()")
        state[0].append(rec)
        return
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        rec.fn[rec.grid](*rec.args, **rec.kwargs)
