"""Where a worker's batches come from: one seam, two loaders (`data.loader`).

Both loaders feed the same loop with the same items. The epoch's item order and its cut into per-rank steps
are `ElasticBatchSampler`'s (a function of seed, epoch, world size and the items already consumed), and every
clip draw is the dataset's pure function of (seed, epoch, item). So `torch` (DataLoader processes on this
worker's node) and `ray_data` (Ray Data decode tasks anywhere in the cluster, `vpace.train.ray_data`) yield
bit-identical uint8 batches, and a resume or resize continues an epoch at the same item with either.
A batch is what the task's `collate` makes of this rank's items of one step, on the CPU (uint8 frames).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset

from vpace.config import DataConfig
from vpace.train.sampler import ElasticBatchSampler

Collate = Callable[[list[Any]], dict[str, Any]]


@dataclass
class EpochBatches:
    """The rest of one epoch on this rank: `step_sizes[k]` items (over all ranks) are consumed by step k,
    whose batch is the k-th of `batches`."""

    step_sizes: list[int]
    batches: Iterator[dict[str, Any]]


@dataclass
class BatchSource:
    """What both loaders share: the data set, how items become a batch, and this rank's place in the world."""

    dataset: Dataset
    collate: Collate
    data: DataConfig
    rank: int
    world: int
    batch_per_worker: int
    seed: int
    pin_memory: bool = False

    def sampler(self, epoch: int, consumed: int) -> ElasticBatchSampler:
        return ElasticBatchSampler(len(self.dataset), self.batch_per_worker, self.rank, self.world, self.seed,
                                   epoch, consumed)

    def epoch(self, epoch: int, consumed: int) -> EpochBatches:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the loader holds (worker processes, a Ray Data pipeline)."""


class TorchSource(BatchSource):
    """`data.loader: torch`: `data.num_workers` DataLoader processes on this node decode the items."""

    def epoch(self, epoch: int, consumed: int) -> EpochBatches:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # before the iterator exists: worker processes copy the dataset
        sampler = self.sampler(epoch, consumed)
        workers = self.data.num_workers
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=self.collate,
                            pin_memory=self.pin_memory,
                            prefetch_factor=max(1, self.data.prefetch_batches) if workers > 0 else None)
        return EpochBatches(sampler.step_sizes(), iter(loader))
