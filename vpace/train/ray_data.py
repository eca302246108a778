"""`data.loader: ray_data`: clips decoded by Ray Data tasks on any node's CPUs, streamed into this worker.

Why one small pipeline per worker and epoch, over this rank's own steps, rather than one dataset handed to the
trainer and split by `get_dataset_shard` / `streaming_split`: the item -> rank -> step cut must be
`ElasticBatchSampler`'s, so the batches are the DataLoader path's bit for bit and a resume or a resize
continues the epoch at the exact item; and no split coordinator stands between the ranks, whose stalls end
in NCCL timeouts (ray-project/ray#41973, #42008) and whose throughput caps the group (#49190).

A row is one step (epoch, step, this rank's item ids). A decode task takes `STEPS_PER_TASK` rows, on CPUs
anywhere in the cluster (`data.decode_resources` pins it, e.g. `{decode: 1}` to CPU-only decode nodes); for
each it draws and decodes the items and collates them with the task's own `collate`, so broken videos are
dropped and counted in `skipped` exactly as with DataLoader, and hands the step on as its own block. Only what
the collate makes travels: uint8 frames, int64 index maps, labels, never floats. `preserve_order` hands the
steps back in order, and `iter_batches(batch_size=None)` yields each block (= one step) as it is.
`iter_torch_batches(batch_size=B)` would re-batch rows into B items, which mixes steps as soon as one loses
items to broken videos; it was also reported slow on video (ray#50128), which `benchmarks/ingest.py` measures.

A decode task that cannot be scheduled waits in Ray without a word, and so would training: a rank that waits
`STALL_WARN_S` for one batch says why, from each node's free resources (`decode_blocker`): no node has
`data.decode_resources` at all, or the nodes that have them have no free CPU - typically because Train
workers were placed on the decode nodes and hold their CPUs (`scale.worker_resources` keeps them off).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vpace.config import DataConfig
from vpace.train.data_source import BatchSource, Collate, EpochBatches

NODE = "_decode_node"  # the Ray node id that decoded a step (kept in `RayDataSource.decode_nodes`)
STEP = "_step"  # the step a block belongs to: checks the order Ray Data hands blocks back in
STEPS_PER_TASK = 2  # steps per decode task: halves the idle gaps Ray Data's scheduler leaves between tasks
# (~0.2 s each here, a quarter of a 0.8 s step); more would unbalance the ranks' tasks at an epoch's end
STALL_WARN_S = 60.0  # a rank waiting this long for one batch says why (far above a step's decode time)
KEEP_OFF = ("Train workers on those nodes hold their CPUs for good: keep them off with "
            "scale.worker_resources (a custom resource only trainer nodes have, e.g. {trainer: 1}) or "
            "scale.use_gpu")

log = logging.getLogger(__name__)


def batch_to_row(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """A collated batch as a one-row block: each tensor gains a leading axis of 1 (so it is >= 2-d), each
    Python scalar (e.g. `skipped`) becomes a 1-d array of one element."""
    row = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            if v.ndim == 0:
                raise ValueError(f"collate returned a 0-d tensor for {k!r}; return a Python scalar instead")
            row[k] = v.numpy()[None]
        else:
            row[k] = np.asarray([v])
    return row


def row_to_batch(row: dict[str, np.ndarray], pin_memory: bool = False) -> dict[str, Any]:
    """The batch `batch_to_row` made, as tensors this process owns (copied out of Ray's read-only object
    store memory, into pinned memory for a CUDA worker); 1-d columns are the Python scalars again."""
    out: dict[str, Any] = {}
    for k, a in row.items():
        if a.ndim == 1:
            out[k] = a[0].item() if isinstance(a[0], np.generic) else a[0]
        elif not pin_memory:
            out[k] = torch.from_numpy(np.array(a[0]))  # numpy's copy: half the CPU of torch's here
        else:
            with warnings.catch_warnings():  # read-only: only read here, by the copy below
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                src = torch.from_numpy(a[0])
            out[k] = torch.empty(src.shape, dtype=src.dtype, pin_memory=True).copy_(src)
    return out


_DATASETS: dict[str, Any] = {}  # in a decode worker process: the data sets it has unpickled, newest last
KEEP_DATASETS = 4  # (different data sets in one Ray session: a Tune search's trials)


@dataclass(frozen=True)
class SharedDataset:
    """A data set in Ray's object store, unpickled once per decode worker process instead of once per task
    (a Kinetics-sized index takes ~1 s to unpickle: more than a step's decoding). `key` is a hash of the
    pickle, so the ranks of one run, which put equal data sets, share one copy per process."""

    key: str
    refs: tuple[Any, ...]  # (ObjectRef of the pickle,): inside a tuple, a task receives the reference

    @classmethod
    def put(cls, dataset: Any) -> SharedDataset:
        import ray
        from ray import cloudpickle

        blob = cloudpickle.dumps(dataset)
        return cls(hashlib.sha1(blob).hexdigest(), (ray.put(blob),))

    def get(self) -> Any:
        import ray
        from ray import cloudpickle

        dataset = _DATASETS.pop(self.key, None)
        if dataset is None:
            dataset = cloudpickle.loads(ray.get(self.refs[0]))
        _DATASETS[self.key] = dataset
        while len(_DATASETS) > KEEP_DATASETS:
            del _DATASETS[next(iter(_DATASETS))]
        return dataset


def decode_steps(rows: dict[str, np.ndarray], *, shared: SharedDataset, collate: Collate
                 ) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data task of `STEPS_PER_TASK` steps: for each, this rank's items of it, drawn for its epoch,
    collated, handed on as soon as it is ready (one one-row block per step)."""
    import ray

    dataset = shared.get()
    node = np.asarray([ray.get_runtime_context().get_node_id()])
    for j in range(len(rows["step"])):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(rows["epoch"][j]))
        out = batch_to_row(collate([dataset[int(i)] for i in rows["items"][j]]))
        out[STEP] = np.asarray(rows["step"][j:j + 1], dtype=np.int64)
        out[NODE] = node
        yield out


def task_resources(data: DataConfig) -> dict[str, float]:
    """What one decode task takes from a node: `data.decode_resources`, with 1 CPU unless they say."""
    return {"CPU": 1.0, **data.decode_resources}


def _fmt(res: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


def decode_blocker(need: Mapping[str, float], total: Mapping[str, Mapping[str, float]],
                   free: Mapping[str, Mapping[str, float]]) -> str | None:
    """Why no decode task needing `need` (CPU included) can start now, from each node's `total` and `free`
    resources (node id -> resources); None when some node has room for one."""
    def fits(res: Mapping[str, float]) -> bool:
        return all(res.get(k, 0.0) >= v for k, v in need.items())

    able = sorted(n for n, res in total.items() if fits(res))
    if not able:
        return (f"no node of this Ray cluster has {_fmt(need)} (data.decode_resources), so no decode task "
                "can start until one joins (the autoscaler adds one if the cluster has such a node type: "
                "cluster.yaml's worker.decode, docs/cluster.md)")
    if any(fits(free.get(n, {})) for n in able):
        return None
    nodes = ", ".join(f"{n[:8]} {free.get(n, {}).get('CPU', 0.0):g} of {total[n].get('CPU', 0.0):g} CPUs free"
                      for n in able)
    return (f"no node has {_fmt(need)} free (data.decode_resources); the nodes that can decode ({nodes}) are "
            f"all taken: by other workers' decode tasks (too few decode CPUs: add decode nodes), or by Train "
            f"workers placed there. {KEEP_OFF}")


def node_resources() -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]] | None:
    """(total, free) resources of each live node; None where Ray's per-node view (a developer API) moved,
    so a warning says less instead of failing."""
    try:
        from ray._private import state

        return state.total_resources_per_node(), state.available_resources_per_node()
    except Exception:  # noqa: BLE001 - any failure of an internal API: the caller degrades
        return None


def _quiet_ray_data() -> None:
    """Ray Data logs each execution's plan and stats to the console at INFO (per worker and epoch here);
    vpace's progress bar and data-wait metric say what matters. Its console shows warnings and errors only;
    its log file (`ray-data.log` in the session's logs) keeps everything."""
    import ray.data  # configures its loggers when first imported: adjust them after that

    for handler in logging.getLogger(ray.data.__name__).handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


@dataclass
class RayDataSource(BatchSource):
    """This rank's steps of one epoch, decoded by Ray Data tasks (see the module docstring)."""

    def __post_init__(self) -> None:
        self._open: Iterator[dict[str, Any]] | None = None
        self.decode_nodes: list[str] = []  # node id of each step decoded so far, in step order
        self.need = task_resources(self.data)
        self.resources = {k: v for k, v in self.need.items() if k != "CPU"}  # Ray takes CPUs as num_cpus
        self._said: set[str] = set()  # the stall warnings given (each once per source)
        self.shared = SharedDataset.put(self.dataset)
        _quiet_ray_data()
        if self.rank == 0 and (nodes := node_resources()) is not None:
            if (why := decode_blocker(self.need, nodes[0], nodes[0])) is not None:
                log.warning("data.loader=ray_data: %s", why)

    def say_stalled(self, epoch: int, step: int) -> None:
        """The warning of a rank that has waited `STALL_WARN_S` for one batch: why, where that can be seen."""
        nodes = node_resources()
        why = None if nodes is None else decode_blocker(self.need, *nodes)
        kind = "blocked" if why else "slow"
        if kind in self._said:
            return
        self._said.add(kind)
        if why is None:
            why = ("Ray's per-node resources are unreadable here; `ray status` shows pending decode tasks "
                   f"({_fmt(self.need)}) if no node can take them. {KEEP_OFF}") if nodes is None else (
                f"some node has {_fmt(self.need)} free, so decoding is slow (one task decodes one step: more "
                "in flight with data.decode_concurrency, more decode CPUs) or held back by "
                "data.object_store_memory; Ray Data's own log is ray-data.log in the session's logs")
        log.warning("rank %d: no batch for %.0f s (epoch %d, step %d): %s", self.rank, STALL_WARN_S, epoch,
                    step, why)

    @contextlib.contextmanager
    def _watch(self, epoch: int, step: int) -> Iterator[None]:
        timer = threading.Timer(STALL_WARN_S, self.say_stalled, (epoch, step))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def pipeline(self, epoch: int, steps: list[list[int]]):
        """The Ray Data dataset of `steps` (this rank's item ids per step) of `epoch`, one block per step."""
        import ray.data
        from ray.data import ExecutionOptions, ExecutionResources, TaskPoolStrategy

        rows = [{"epoch": epoch, "step": k, "items": np.asarray(items, dtype=np.int64)}
                for k, items in enumerate(steps)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            decode_steps, batch_size=STEPS_PER_TASK, batch_format="numpy", udf_modifying_row_count=False,
            fn_kwargs={"shared": self.shared, "collate": self.collate},
            compute=TaskPoolStrategy(size=self.data.decode_concurrency),
            num_cpus=self.need["CPU"], resources=self.resources or None)
        ctx = ds.context  # this dataset's own copy of the process's DataContext
        limits = ExecutionResources.for_limits(object_store_memory=self.data.object_store_memory)
        ctx.execution_options = ExecutionOptions(resource_limits=limits, preserve_order=True)
        ctx.enable_progress_bars = ctx.print_on_execution_start = ctx.enable_auto_log_stats = False
        ctx.target_max_block_size = 1  # a block per yielded step, not several merged into one
        return ds

    def epoch(self, epoch: int, consumed: int) -> EpochBatches:
        self.close()  # the previous epoch's pipeline, if the loop left it early
        sampler = self.sampler(epoch, consumed)
        steps = list(sampler)
        if not steps:
            return EpochBatches([], iter(()))
        blocks = self.pipeline(epoch, steps).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=self.data.prefetch_batches)
        self._open = self._batches(epoch, blocks)
        return EpochBatches(sampler.step_sizes(), self._open)

    def _batches(self, epoch: int, blocks) -> Iterator[dict[str, Any]]:
        it = iter(blocks)
        # one step per block (`target_max_block_size`); should Ray Data merge or split blocks, rows are steps
        rows = ({k: v[j:j + 1] for k, v in block.items()} for block in it for j in range(len(block[STEP])))
        try:
            for k in itertools.count():
                with self._watch(epoch, k):
                    row = next(rows, None)
                if row is None:
                    return
                got = int(row.pop(STEP)[0])
                if got != k:  # preserve_order broken: a wrong batch would train silently
                    raise RuntimeError(f"Ray Data returned step {got} where step {k} was due")
                self.decode_nodes.append(str(row.pop(NODE)[0]))
                yield row_to_batch(row, self.pin_memory)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # stops the streaming executor at once instead of when it is collected

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None
