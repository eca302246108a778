"""Training-loop overhead: the Ray Train loop vs a bare single-process loop on the same model and data.

Both run pre-training's `TrainSpec` through the one step function, `vpace.train.step.train_step` (real
decode in DataLoader worker processes, fused augmentation, the pace_ctr objective, SGD) on the same synthetic
videos with the same torch thread count. The bare loop is the minimum a user would write by hand; the Ray
loop is `vpace.train.run_task` on one worker (the goal: <= 10% slower per step). A second Ray run on two
workers gives clips/s per worker (DDP over gloo on this CPU).

Rows: step_ms (median step, data wait included), mean_step_ms (Ray: wall clock per step, so reports and
checkpoints count), overhead_pct (of the medians), clips_per_s, clips_per_s_per_worker.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import append_rows

STEPS = 40
WARMUP = 3


def _cfg(data: Path, storage: Path, name: str, workers: int, cpus: float):
    from vpace.config import load_config

    return load_config("smoke", overrides=[
        f"data.index={data}", f"run.storage={storage}", f"run.name={name}", "data.epoch_size=1000",
        "optim.epochs=1", f"optim.max_steps={STEPS}", "scale.checkpoint_every=1000", "data.num_workers=1",
        f"scale.min_workers={workers}", f"scale.max_workers={workers}", f"scale.cpus_per_worker={cpus}"])


def bare_loop(cfg) -> tuple[float, float]:
    """(median, mean) step seconds (data wait included) of a single-process loop around the same step."""
    from functools import partial

    import torch
    from torch.utils.data import DataLoader

    from vpace.train.pretraining import PRETRAIN
    from vpace.train.sampler import ElasticBatchSampler
    from vpace.train.step import build_optimizer, train_step, trainable

    torch.manual_seed(cfg.run.seed)
    torch.set_num_threads(int(cfg.scale.cpus_per_worker))
    model = PRETRAIN.build_model(cfg).train()
    opt = build_optimizer(cfg.optim, trainable(model), cfg.optim.lr)
    forward_loss = partial(PRETRAIN.forward_loss, cfg=cfg)
    ds = PRETRAIN.dataset(cfg)
    sampler = ElasticBatchSampler(len(ds), cfg.optim.batch_size, 0, 1, cfg.run.seed, 0)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=PRETRAIN.collate)
    times = []
    t = time.perf_counter()
    for step, batch in enumerate(loader):
        batch.pop("skipped")
        train_step(model, opt, batch, torch.Generator().manual_seed(step), forward_loss)
        now = time.perf_counter()
        times.append(now - t)
        t = now
        if step + 1 >= STEPS:
            break
    return statistics.median(times[WARMUP:]), statistics.mean(times[WARMUP:])


def run(out_dir: Path) -> None:
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="vpray"))

    from vpace.data.synthetic import make_synthetic
    from vpace.train import pretrain
    from vpace.train.ray_session import start_ray, stop_ray

    cpus = float(max(1, (os.cpu_count() or 2)))
    with tempfile.TemporaryDirectory() as tmp:
        data, runs = Path(tmp) / "data", Path(tmp) / "runs"
        make_synthetic(data, num_videos=40, seed=0, progress=False)
        one = _cfg(data, runs, "bench1", 1, cpus)
        shape = (f"{one.model.backbone} b{one.optim.batch_size}x{one.data.clips_per_video} "
                 f"T{one.data.clip_len} {one.augment.crop}px cpu{int(cpus)}")
        bare = [bare_loop(one)]  # measured before and after the Ray runs; the faster counts (load drifts)

        started = start_ray()  # one local Ray for both runs, started as `vpace pretrain` starts it
        try:
            r1 = pretrain(one).metrics
            r2 = pretrain(_cfg(data, runs, "bench2", 2, cpus / 2))
        finally:
            if started:
                stop_ray()
        bare_s, bare_mean = min([*bare, bare_loop(one)])
    ray_s, ray_wall = r1["step_time_s"], r1["wall_per_step_s"]
    per_batch_clips = one.optim.batch_size * one.data.clips_per_video
    windows = [r["clips_per_s"] for r in r2.history["steps"]][WARMUP:]
    shape2 = shape.replace(f"cpu{int(cpus)}", "cpu2x1")
    rows = [dict(kernel="train_step", provider=p, shape=sh, metric=m, value=f"{v:.1f}") for p, sh, m, v in (
        ("bare", shape, "step_ms", bare_s * 1e3),
        ("ray_train_1w", shape, "step_ms", ray_s * 1e3),
        ("bare", shape, "mean_step_ms", bare_mean * 1e3),
        ("ray_train_1w", shape, "mean_step_ms", ray_wall * 1e3),
        ("ray_train_1w", shape, "overhead_pct", (ray_s / bare_s - 1) * 100),
        ("bare", shape, "clips_per_s", per_batch_clips / bare_s),
        ("ray_train_1w", shape, "clips_per_s", per_batch_clips / ray_s),
        ("ray_train_2w", shape2, "clips_per_s_per_worker", statistics.median(windows) / 2),
    )]
    append_rows(out_dir / "train.csv", rows)
    for r in rows:
        print(f"{r['provider']:14s} {r['metric']:24s} {r['value']}")


if __name__ == "__main__":
    run(Path(__file__).parent / "results")
