"""Elastic re-sharding batch sampler: each epoch is one fixed permutation, cut by the *current* world size.

Why not `DistributedSampler`: it shards a whole epoch up front by rank, so after a resize (a restart with a
different world size from a mid-epoch checkpoint) some videos are seen twice and others never. Here an epoch
is a permutation of `num_items` that depends only on (seed, epoch); a global step takes the next
`global_batch` items of it and splits them over the ranks. A checkpoint stores how many items of the epoch
were consumed, so a restart with any world size continues with exactly the items not yet seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The item order of one epoch: a function of (seed, epoch) only, identical on every rank and restart."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(num_items, generator=g).numpy()


def step_bounds(remaining: int, global_batch: int, world_size: int) -> list[tuple[int, int]]:
    """[start, end) offsets of each global step over `remaining` items.

    Steps take `global_batch` items; a last step with fewer items than ranks is merged into the step before it
    (every rank must get at least one item, and no item may be dropped).
    """
    bounds = [(s, min(s + global_batch, remaining)) for s in range(0, remaining, global_batch)]
    if len(bounds) >= 2 and bounds[-1][1] - bounds[-1][0] < world_size:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def per_worker_batch(global_batch: int, world_size: int) -> int:
    """Videos per worker per step: the configured global batch split over the *actual* world size."""
    return max(1, global_batch // world_size)


@dataclass
class ElasticBatchSampler:
    """Yields this rank's item indices for each remaining global step of one epoch.

    `consumed` is the number of items of the epoch's permutation already trained on (from the checkpoint).
    All ranks yield the same number of batches (DDP needs equal step counts); sizes differ by at most one item
    (plus a merged tail on the last step).
    """

    num_items: int
    batch_per_worker: int
    rank: int
    world_size: int
    seed: int
    epoch: int
    consumed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if not 0 <= self.consumed <= self.num_items:
            raise ValueError(f"consumed {self.consumed} outside epoch of {self.num_items} items")
        self.global_batch = self.batch_per_worker * self.world_size
        self._perm = epoch_permutation(self.num_items, self.seed, self.epoch)
        self._bounds = step_bounds(self.num_items - self.consumed, self.global_batch, self.world_size)

    def __len__(self) -> int:
        return len(self._bounds)

    def step_sizes(self) -> list[int]:
        """Items consumed (over all ranks) by each remaining step, so the loop can advance `consumed`."""
        return [e - s for s, e in self._bounds]

    def __iter__(self) -> Iterator[list[int]]:
        rest = self._perm[self.consumed:]
        for s, e in self._bounds:
            part = np.array_split(rest[s:e], self.world_size)[self.rank]
            yield part.tolist()
