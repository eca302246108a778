"""MoCo key queue: a fixed-size ring buffer of past keys, identical on every worker.

Why all-gather before enqueue: each worker sees only its shard of the batch; gathering the keys of all
workers (in rank order) and enqueueing the same tensor everywhere keeps every worker's negatives identical,
as in MoCo. The queue lives in buffers so it is saved/restored with the state dict.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_rows(x: Tensor, capacity: int | None = None) -> tuple[Tensor, Tensor]:
    """The rows `x` [n_r, ...] of all workers in rank order, and which of them are real: `(rows, valid)`.

    Ranks may hold different n_r, but `all_gather` needs equal shapes. With `capacity` (a bound on every
    rank's n_r that all ranks know) each rank pads to it, so nothing is read back to the host: a training
    step keeps the GPU busy. Without it the sizes are gathered and read first (one device sync). Outside an
    initialised process group: `(x, all True)`.
    """
    valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if not _distributed():
        return x, valid
    world = dist.get_world_size()
    if capacity is None:
        n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n)
        capacity = max(int(s.item()) for s in sizes)
    if x.shape[0] > capacity:
        raise ValueError(f"all_gather_rows: {x.shape[0]} rows on rank {dist.get_rank()} exceed the agreed "
                         f"capacity {capacity}")
    pad = capacity - x.shape[0]
    row = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (explicit width: n_r may be 0)
    flat = torch.cat([row, valid[:, None].to(x.dtype)], 1)  # validity rides along, exact in any float dtype
    flat = torch.cat([flat, flat.new_zeros((pad, flat.shape[1]))]) if pad else flat
    out = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(out, flat.contiguous())
    rows = torch.cat(out)
    return rows[:, :-1].reshape(-1, *x.shape[1:]), rows[:, -1] > 0.5


class KeyQueue(nn.Module):
    """Ring buffer `keys` [size, dim] (rows = keys) with write pointer `ptr`.

    `enqueue(k)` writes rows at `ptr, ptr+1, ...` modulo `size` (wrapping; a batch larger than the queue keeps
    only its last `size` rows, exactly what writing them one by one would leave) and advances `ptr` by the
    number of keys. Starts as random unit vectors, like MoCo, so it is usable as negatives from step one.
    The write is computed on the device from a validity mask, so the number of keys is never read back.
    """

    def __init__(self, size: int, dim: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"KeyQueue: size and dim must be >= 1, got size={size}, dim={dim}")
        self.size, self.dim = size, dim
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, *, gather: bool = True, capacity: int | None = None) -> None:
        """Write `keys` [n, dim]: all workers' keys in rank order when distributed and `gather` (each rank's
        n at most `capacity` when given: see `all_gather_rows`)."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"KeyQueue.enqueue: expected keys [n, {self.dim}], got {tuple(keys.shape)}")
        keys = keys.detach().to(self.keys.dtype)
        valid = torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device)
        if gather:
            keys, valid = all_gather_rows(keys, capacity)
        self._write(keys, valid)

    def _write(self, rows: Tensor, valid: Tensor) -> None:
        """Write the `valid` rows (in order) as if one by one from `ptr`; all on the device."""
        m, size = rows.shape[0], self.size
        if m == 0:
            return
        order = torch.argsort((~valid).to(torch.int8), stable=True)  # valid rows first, their order kept
        rows, n = rows[order], valid.sum()
        # slot offset s (from ptr) ends up holding the last valid row j < n with j = s (mod size), if any
        s = torch.arange(min(m, size), device=rows.device)
        j = s + size * torch.div(n - 1 - s, size, rounding_mode="floor").clamp(min=0)
        pos = (self.ptr + s) % size
        new = torch.where((s < n)[:, None], rows[j.clamp(max=m - 1)], self.keys[pos])
        self.keys.index_copy_(0, pos, new)
        self.ptr.copy_((self.ptr + n) % size)

    def negatives(self) -> Tensor:
        """A detached snapshot of the queue to use as negatives (safe against a later in-place enqueue)."""
        return self.keys.detach().clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
