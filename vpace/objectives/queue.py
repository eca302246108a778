"""MoCo key queue: a fixed-size ring buffer of past keys, identical on every worker.

Why all-gather before enqueue: each worker sees only its shard of the batch; gathering the keys of all
workers (in rank order) and enqueueing the same tensor everywhere keeps every worker's negatives identical,
as in MoCo. The queue lives in buffers so it is saved/restored with the state dict.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate `x` [n_r, ...] of all workers in rank order; ranks may hold different n_r.

    No-op outside an initialised process group. Uneven row counts (a short last batch on one worker) are
    padded to the max and trimmed, since `all_gather` needs equal shapes.
    """
    if not _distributed():
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    m = max(counts)
    if m == 0:
        return x
    padded = x if x.shape[0] == m else torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))])
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:c] for o, c in zip(out, counts, strict=True)])


class KeyQueue(nn.Module):
    """Ring buffer `keys` [size, dim] (rows = keys) with write pointer `ptr`.

    `enqueue(k)` writes rows at `ptr, ptr+1, ...` modulo `size` (wrapping; a batch larger than the queue keeps
    only its last `size` rows, exactly what writing them one by one would leave) and advances `ptr` by the
    number of keys. Starts as random unit vectors, like MoCo, so it is usable as negatives from step one.
    """

    def __init__(self, size: int, dim: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"KeyQueue: size and dim must be >= 1, got size={size}, dim={dim}")
        self.size, self.dim = size, dim
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, *, gather: bool = True) -> Tensor:
        """Write `keys` [n, dim] (all workers' keys, rank order, when distributed and `gather`).

        Returns the keys written (the gathered tensor)."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"KeyQueue.enqueue: expected keys [n, {self.dim}], got {tuple(keys.shape)}")
        keys = keys.detach()
        if gather:
            keys = all_gather_rows(keys)
        n = keys.shape[0]
        if n == 0:
            return keys
        ptr = int(self.ptr)
        tail = keys[-self.size:]  # earlier rows would be overwritten within this same call
        first = (ptr + n - tail.shape[0]) % self.size
        pos = (first + torch.arange(tail.shape[0], device=self.keys.device)) % self.size
        self.keys.index_copy_(0, pos, tail.to(self.keys.dtype))
        self.ptr.fill_((ptr + n) % self.size)
        return keys

    def negatives(self) -> Tensor:
        """A detached snapshot of the queue to use as negatives (safe against a later in-place enqueue)."""
        return self.keys.detach().clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
