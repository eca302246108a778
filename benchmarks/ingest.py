"""Ray Data ingest (`data.loader: ray_data`) against the DataLoader path (`torch`), on the same items.

Rows (to ``ingest.csv``), all from camera-like sources (``benchmarks.videos``, 320x240, 7.2 s, one keyframe
per 250 frames); the loader rows (kernel ``ingest``) on the x264 ones, pace clips of the paper configs' data
(2 clips of 16 frames at 128x171, paces 1-4, 8 items per step):
- ``one_node``: clips/s one consumer receives on one node with the same CPUs: a local Ray of ``CPUS`` CPUs
  running ``CPUS`` decode tasks vs ``CPUS`` DataLoader workers; ``ray_data/dataloader`` is the ratio (goal
  >= 0.9). Wall clock over whole epochs after a warm-up epoch, alternating loaders, median of ``EPOCHS``;
  also after each epoch's first batch (a real epoch has thousands of steps, so its start weighs nothing).
- ``trainer_node_cpu``: on a 3-node local ``ray.cluster_utils.Cluster`` (head: this driver only; a trainer
  node with ``{trainer: 1}``; a decode node with ``{decode: CPUS}``) the trainer node's own CPU time per
  clip: the consumer actor, its child processes (DataLoader workers) and the node's Ray processes (raylet
  and object store, agents), from /proc. ``ray_data/dataloader`` is the ratio (goal <= 0.1). Also the
  consumer's CPU ms per second: Ray Data's executor threads cost time per second more than per clip.
- ``decode_rate``: clips per CPU-second of the decode path (draw, decode, collate: what one decode task does)
  for each paper config's data (``CONFIGS``), from each raw encoding (``RAW``) and from the ``vpace prepare``
  copy of the x264 set at the config's decode size; docs/cluster.md turns them into decode CPUs per GPU.
- ``to_torch``: consumer CPU and wall ms per batch (median, q20, q80 of 5 passes after a warm-up) of
  video-sized uint8 batches already in the object store: ``iter_torch_batches`` over one row per item (how
  a per-item map hands video to Train, ray-project/ray#50128) vs vpace's one block per step through
  ``iter_batches(batch_size=None)`` + ``row_to_batch``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CPUS = 2  # decode CPUs of each side (this machine has 2)
CONFIGS = ("paper-r21d", "paper-s3dg", "rspnet-r21d")  # the paper configs' distinct data (c3d, r3d: r21d's)
VIDEOS, FRAMES = 6, 180  # per set: UCF101's mean length (7.2 s at 25 fps)
RAW = ("x264_default", "mpeg4_avi")  # camera footage as stored by a camera and by UCF101 (benchmarks.videos)
ITEMS, BATCH, EPOCHS = 96, 8, 3  # items per epoch (12 steps), items per step, timed epochs per loader
TORCH_STEPS = 8  # batches of the to_torch comparison


def config_dataset(name: str, paths: list[Path], folder: Path, items: int):
    """Config `name`'s pre-training data set (`pretrain_dataset`, as the loop builds it) over `paths`."""
    from vpace.config import load_config
    from vpace.data import VideoEntry, VideoIndex
    from vpace.data.index import save_index
    from vpace.train.pretraining import pretrain_dataset

    index = save_index(VideoIndex([VideoEntry(str(p), 0, "train") for p in paths], ["bench"], str(folder)),
                       folder / f"{name}.json")
    cfg = load_config(name, overrides=[f"data.index={index}", f"data.epoch_size={items}",
                                       "data.cache_dir=null"])
    return pretrain_dataset(cfg), cfg


def dataset(folder: Path, paths: list[Path]):
    """The paper-r21d data set (also r3d's and c3d's) over `paths`, its collate and a description."""
    from vpace.data import collate_clips

    ds, cfg = config_dataset("paper-r21d", paths, folder, ITEMS)
    d = cfg.data
    shape = (f"{len(paths)} camera-like x264 videos -> {BATCH}x{d.clips_per_video}x{d.clip_len}x{d.height}x"
             f"{d.width} paces {cfg.pace.paces}")
    return ds, collate_clips, shape


def decode_rates(folder: Path, raw: dict[str, list[Path]]) -> list[dict]:
    """Clips per CPU-second (median, q20, q80 of 3 passes after a warm-up) of draw + decode + collate, in this
    process, per config of `CONFIGS`: from each raw set and from the x264 set's prepared copy."""
    from benchmarks.common import Timing, bench, timing_rows
    from vpace.config import load_config
    from vpace.data import collate_clips
    from vpace.data.transcode import TranscodeSettings, transcode_video

    rows = []
    for name in CONFIGS:
        d = load_config(name).data
        settings = TranscodeSettings(size=(d.height, d.width))  # `vpace prepare --size HxW`: the decode size
        prepared = [Path(transcode_video(str(p), str(folder / f"prepared_{d.height}" / f"{p.stem}.mp4"),
                                         settings).output) for p in raw["x264_default"]]
        sets = {**{f"{enc}/raw": paths for enc, paths in raw.items()}, "x264_default/prepared": prepared}
        for provider, paths in sets.items():
            items = 2 * len(paths)
            ds, _ = config_dataset(name, paths, folder, items)
            clips = items * collate_clips([ds[0]])["frames"].shape[1]
            t = bench(lambda ds=ds, items=items: collate_clips([ds[i] for i in range(items)]), reps=3)
            rate = Timing(clips / t.median, clips / t.q80, clips / t.q20, t.n)  # a slower pass: a lower rate
            shape = f"{name}: {clips // items} x {d.clip_len}x{d.height}x{d.width}, from 320x240"
            row = dict(kernel="decode_rate", provider=provider, shape=shape)
            rows += timing_rows(row, "clips/cpu_s", rate)
            print(f"  {name} {provider}: {rate.median:.1f} clips per CPU-second", flush=True)
    return rows


def source(kind: str, ds: Any, collate: Any, **data: Any):
    """A one-rank `BatchSource` of `kind` (torch | ray_data) with `data` as its `DataConfig` fields."""
    from vpace.config import DataConfig
    from vpace.train.data_source import TorchSource
    from vpace.train.ray_data import RayDataSource

    cls = RayDataSource if kind == "ray_data" else TorchSource
    return cls(ds, collate, DataConfig(**data), rank=0, world=1, batch_per_worker=BATCH, seed=0)


def run_epoch(src: Any, epoch: int) -> tuple[int, int, float, float]:
    """One whole epoch, pulled as a training loop pulls it: (clips, clips of the first batch, seconds to the
    first batch, seconds in all)."""
    t0, clips, first = time.perf_counter(), 0, None
    for batch in src.epoch(epoch, 0).batches:
        n = int(batch["frames"].shape[0] * batch["frames"].shape[1])
        first = first or (n, time.perf_counter() - t0)
        clips += n
    return clips, *(first or (0, 0.0)), time.perf_counter() - t0


LOADERS = {"dataloader": dict(num_workers=CPUS), "ray_data": dict(decode_concurrency=CPUS)}


def one_node(ds: Any, collate: Any) -> dict[str, tuple[float, float, float]]:
    """Each loader on a local Ray of `CPUS` CPUs, median of `EPOCHS` epochs after a warm-up: (clips/s over
    whole epochs, clips/s after the first batch of each, seconds to the first batch)."""
    import ray

    ray.init(num_cpus=CPUS, include_dashboard=False)
    try:
        sources = {k: source("ray_data" if k == "ray_data" else "torch", ds, collate, **v)
                   for k, v in LOADERS.items()}
        runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sources}
        for epoch in range(EPOCHS + 1):
            for k, src in sources.items():
                clips, first_clips, first_s, total_s = run_epoch(src, epoch)
                if epoch:  # epoch 0 warms up: worker processes, imports, the page cache
                    runs[k].append((clips / total_s, (clips - first_clips) / (total_s - first_s), first_s))
        for src in sources.values():
            src.close()
    finally:
        ray.shutdown()
    return {k: tuple(statistics.median(col) for col in zip(*v, strict=True)) for k, v in runs.items()}


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _node_pids(node: Any) -> list[int]:
    return [p.process.pid for procs in node.all_processes.values() for p in procs if p.process is not None]


class Consumer:
    """A training worker's place on the trainer node, without the training: pulls epochs of one loader
    and measures its own CPU time, its reaped children's (DataLoader workers) included."""

    def __init__(self, kind: str, ds: Any, collate: Any, data: dict[str, Any]) -> None:
        self.src = source(kind, ds, collate, **data)
        self.epoch = 0

    def run(self, epochs: int) -> tuple[int, float, float]:
        """(clips, CPU seconds, wall seconds) of `epochs` whole epochs."""
        t0, clips = os.times(), 0
        for _ in range(epochs):
            clips += run_epoch(self.src, self.epoch)[0]
            self.epoch += 1
        t1 = os.times()  # the epoch's DataLoader workers have exited and been reaped
        return clips, sum(t1[:4]) - sum(t0[:4]), t1.elapsed - t0.elapsed


def trainer_node_cpu(ds: Any, collate: Any) -> dict[str, tuple[float, float, float]]:
    """The trainer node's own CPU with each loader, on a local 3-node cluster: ms per clip of the consumer
    (with its children) and of the node's Ray processes, and the consumer's CPU ms per second."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    trainer = cluster.add_node(num_cpus=CPUS, resources={"trainer": 1})
    cluster.add_node(num_cpus=CPUS, resources={"decode": CPUS})
    out: dict[str, tuple[float, float, float]] = {}
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        actor = ray.remote(num_cpus=0, resources={"trainer": 1})(Consumer)
        for kind, data in (("dataloader", LOADERS["dataloader"]),
                           ("ray_data", {**LOADERS["ray_data"], "decode_resources": {"decode": 1}})):
            consumer = actor.remote("ray_data" if kind == "ray_data" else "torch", ds, collate, data)
            ray.get(consumer.run.remote(1))  # warm-up epoch
            node0 = sum(_proc_cpu_s(p) for p in _node_pids(trainer))
            clips, cpu, wall = ray.get(consumer.run.remote(EPOCHS))
            node = sum(_proc_cpu_s(p) for p in _node_pids(trainer)) - node0
            out[kind] = 1e3 * cpu / clips, 1e3 * node / clips, 1e3 * cpu / wall
            print(f"  trainer node, {kind}: consumer {out[kind][0]:.2f} + Ray processes "
                  f"{out[kind][1]:.2f} ms CPU per clip; consumer {out[kind][2]:.0f} ms CPU per second",
                  flush=True)
            ray.kill(consumer)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return out


def to_torch(ds_shape: tuple[int, ...]) -> list[dict]:
    """Rows of consumer CPU and wall ms per batch (after a warm-up pass): `iter_torch_batches` over item rows
    and vpace's one block per step."""
    import ray
    import ray.data

    from benchmarks.common import bench, timing_rows
    from vpace.train.ray_data import batch_to_row, row_to_batch

    def items(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # one item: [n, T, H, W, 3]
        rng = np.random.default_rng(int(batch["id"][0]))
        return {"frames": rng.integers(0, 256, (1, *ds_shape[1:]), dtype=np.uint8)}

    def steps(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # one step: [B, n, T, H, W, 3]
        import torch

        rng = np.random.default_rng(int(batch["id"][0]))
        return batch_to_row({"frames": torch.from_numpy(rng.integers(0, 256, ds_shape, dtype=np.uint8))})

    shape = f"uint8 {'x'.join(map(str, ds_shape))} ({np.prod(ds_shape) / 1e6:.1f} MB) per batch"
    rows = []
    ray.init(num_cpus=CPUS, include_dashboard=False)
    try:
        per_item = ray.data.range(BATCH * TORCH_STEPS, override_num_blocks=BATCH * TORCH_STEPS).map_batches(
            items, batch_size=1).materialize()
        per_step = ray.data.range(TORCH_STEPS, override_num_blocks=TORCH_STEPS).map_batches(
            steps, batch_size=1).materialize()
        ways = {
            "iter_torch_batches": lambda: per_item.iter_torch_batches(batch_size=BATCH, device="cpu"),
            "block_per_step": lambda: (row_to_batch(r) for r in per_step.iter_batches(batch_size=None)),
        }
        for name, it in ways.items():
            def one_pass(it=it) -> None:
                shapes = [tuple(batch["frames"].shape) for batch in it()]
                assert shapes == [ds_shape] * TORCH_STEPS, shapes

            for clock in ("cpu", "wall"):
                t = bench(one_pass, reps=5, clock=clock)
                rows += timing_rows(dict(kernel="ingest_to_torch", provider=name, shape=shape),
                                    f"{clock}_ms/batch", t, scale=1e3 / TORCH_STEPS)
                print(f"  {name}: {1e3 * t.median / TORCH_STEPS:.1f} ms {clock} per batch", flush=True)
    finally:
        ray.shutdown()
    return rows


def run(out_dir: Path) -> None:
    from benchmarks.common import append_rows
    from benchmarks.videos import write_camera_set
    from vpace.train.ray_data import _quiet_ray_data

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="vpray"))  # short: Ray's socket paths
    # Ray's workers run at nice 15; the DataLoader's at this process's. A decode node runs nothing else, but
    # on a shared machine nice 15 would measure the neighbours' load, not Ray Data.
    os.environ.setdefault("RAY_worker_niceness", "0")
    _quiet_ray_data()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = {enc: write_camera_set(Path(tmp) / "raw", VIDEOS, enc, FRAMES)[0] for enc in RAW}
        rows += decode_rates(Path(tmp), raw)
        ds, collate, shape = dataset(Path(tmp), raw["x264_default"])
        rates = one_node(ds, collate)
        base = dict(kernel="ingest", shape=f"{shape}, {CPUS} CPUs")
        for metric, col in (("one_node_clips/s", 0), ("one_node_after_first_batch_clips/s", 1),
                            ("first_batch_s", 2)):
            rows += [{**base, "provider": k, "metric": metric, "value": f"{v[col]:.2f}"}
                     for k, v in rates.items()]
        ratios = [rates["ray_data"][col] / rates["dataloader"][col] for col in (0, 1)]
        print(f"  one node, {CPUS} CPUs: " + ", ".join(f"{k} {v[0]:.1f} ({v[1]:.1f} after the first batch, "
                                                      f"{v[2]:.1f} s to it)" for k, v in rates.items())
              + f" clips/s; ray_data/dataloader {ratios[0]:.2f}, {ratios[1]:.2f} (goal >= 0.9)", flush=True)
        names = ("one_node_ratio", "one_node_after_first_batch_ratio")
        rows += [{**base, "provider": "ray_data/dataloader", "metric": metric, "value": f"{r:.3f}"}
                 for metric, r in zip(names, ratios, strict=True)]

        parts = trainer_node_cpu(ds, collate)
        cpu = {k: consumer + node for k, (consumer, node, _) in parts.items()}
        ratio = cpu["ray_data"] / cpu["dataloader"]
        print(f"  trainer node CPU per clip: ray_data/dataloader {ratio:.3f} (goal <= 0.1)", flush=True)
        for k, (consumer, node, per_s) in parts.items():
            rows += [{**base, "provider": k, "metric": metric, "value": f"{v:.3f}"} for metric, v in (
                ("trainer_node_cpu_ms/clip", consumer + node), ("consumer_cpu_ms/clip", consumer),
                ("node_ray_processes_cpu_ms/clip", node), ("consumer_cpu_ms/s", per_s))]
        rows.append({**base, "provider": "ray_data/dataloader", "metric": "trainer_node_cpu_ratio",
                     "value": f"{ratio:.3f}"})

    rows += to_torch((BATCH, 2, 16, 128, 171, 3))
    append_rows(Path(out_dir) / "ingest.csv", rows)
