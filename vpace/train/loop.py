"""The per-worker training loop: one attempt of one Ray Train worker, for any `TrainSpec`.

Build the model, restore the latest checkpoint (after a failure, a resize, or a re-run of the same run name),
wrap it in DDP, then step through the epochs. The configured global batch is split over the *current* world
size and the lr follows the actual global batch, so a resized group keeps the recipe. Every `log_every`
steps the metrics are reduced over the workers; every `checkpoint_every` steps, at each epoch end and at the
last step all ranks report and rank 0 attaches a checkpoint. Both happen at steps that depend on the step
number alone, so every rank reaches the same collectives.
"""

from __future__ import annotations

import logging
import random
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vpace.config import Config, OptimConfig
from vpace.paths import is_remote, local_path, run_dir_of
from vpace.train.checkpoint import checkpoint_dir_name, save_checkpoint
from vpace.train.data_source import BatchSource, TorchSource
from vpace.train.export import module_prefix
from vpace.train.metrics import STARVED_FRAC, STARVED_HINT, Window, epoch_row
from vpace.train.progress import Progress
from vpace.train.sampler import per_worker_batch, step_bounds
from vpace.train.spec import TrainSpec
from vpace.train.state import LoopState, checkpoint_names, resume_state, rng_state, set_rng_state
from vpace.train.step import StepSchedule, build_optimizer, precision, to_device, train_step, trainable

HISTORY_FILE = "history.json"  # the metric history, readable without unpickling the state
REPORT_FILE = "report.json"  # the metrics reported with the checkpoint (a finished run's result)
log = logging.getLogger(__name__)


def planned_steps(num_items: int, global_batch: int, world: int, st: LoopState, o: OptimConfig) -> int:
    """Total steps of the run if the world size stays as it is now (for the progress bar)."""
    rest = len(step_bounds(num_items - st.consumed, global_batch, world)) if st.epoch < o.epochs else 0
    per_epoch = len(step_bounds(num_items, global_batch, world))
    total = st.step + rest + per_epoch * max(0, o.epochs - st.epoch - 1)
    return min(total, o.max_steps) if o.max_steps else total


def run_finished(o: OptimConfig, step: int, epoch: int) -> bool:
    """The run's end: `epochs` epochs completed, or `max_steps` steps taken."""
    return epoch >= o.epochs or (o.max_steps is not None and step >= o.max_steps)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The augmentation draw of a step: the same after a restart."""
    return seed * 1_000_003 + step * 1009 + rank


def make_source(spec: TrainSpec, cfg: Config, rank: int, world: int, batch_per_worker: int,
                device: torch.device) -> BatchSource:
    """This worker's batches from the loader `data.loader` names (`vpace.train.data_source`)."""
    kind: type[BatchSource] = TorchSource
    if cfg.data.loader == "ray_data":
        from vpace.train.ray_data import RayDataSource

        kind = RayDataSource
    return kind(spec.dataset(cfg), spec.collate, cfg.data, rank, world, batch_per_worker, cfg.run.seed,
                pin_memory=device.type == "cuda")


def _all_rng_states(world: int) -> list[dict[str, Any]]:
    state = rng_state()
    if world == 1 or not dist.is_initialized():
        return [state]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, state)
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` = {"spec": TrainSpec, "cfg": Config}."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    WorkerLoop(config["spec"], config["cfg"], ctx.get_world_rank(), ctx.get_world_size(),
               ray.train.torch.get_device()).run()


class WorkerLoop:
    """One attempt of one Ray Train worker: restore -> DDP -> epochs of elastic batches -> checkpoints."""

    def __init__(self, spec: TrainSpec, cfg: Config, rank: int, world: int, device: torch.device) -> None:
        import ray.train.torch

        self.spec, self.cfg, self.rank, self.world, self.device = spec, cfg, rank, world, device
        o, seed = cfg.optim, cfg.run.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(cfg.scale.cpus_per_worker)))
        self.run_dir = run_dir_of(cfg)
        self.taken = checkpoint_names(self.run_dir)  # a resume past a broken checkpoint must not reuse names
        self.model = spec.build_model(cfg).to(device).train()  # holds all state: what a checkpoint stores
        loaded = resume_state(self.run_dir)
        self.st = LoopState()
        if loaded is not None:
            self.model.load_state_dict(loaded["model"])
            self.st = LoopState(**loaded["loop"])
            if rank < len(rngs := loaded.get("rng") or []):
                set_rng_state(rngs[rank])
        self.ddp = ray.train.torch.prepare_model(self.model)
        self.st.history.setdefault("attempts", []).append({"start_step": self.st.step, "world_size": world})

        self.batch = per_worker_batch(o.batch_size, world)  # the global batch re-split over this world size
        self.schedule = StepSchedule(o, self.batch * world)
        self.opt = build_optimizer(o, trainable(self.model), self.schedule.lr(self.st.epoch))
        self.amp_dtype, self.scaler = precision(o, device)
        if loaded is not None:
            self.opt.load_state_dict(loaded["optimizer"])
            if self.scaler is not None and loaded.get("scaler"):
                self.scaler.load_state_dict(loaded["scaler"])
        self.lr = self.schedule.apply(self.opt, self.st.epoch)
        self.forward_loss = partial(spec.forward_loss, cfg=cfg)

        self.source = make_source(spec, cfg, rank, world, self.batch, device)
        self.n_items = len(self.source.dataset)
        total = planned_steps(self.n_items, self.batch * world, world, self.st, o)
        self.log_every = max(1, min(20, total // 50))
        out = local_path(self.run_dir) if not is_remote(self.run_dir) else Path.cwd() / "progress"
        self.progress = Progress(out, total, self.st.step, enabled=rank == 0, desc=spec.name)
        self.window = Window(device)
        self.step_times: list[float] = []  # data wait + step of each step of this attempt
        self.step_ends: list[float] = []  # wall clock after each step, reports included
        self.last_batch: dict[str, Any] | None = None
        self.windows = 0  # flushed this attempt (the first one pays for the loader's start-up)
        self.starved_said = False

    @property
    def done(self) -> bool:
        return run_finished(self.cfg.optim, self.st.step, self.st.epoch)

    def run(self) -> None:
        try:
            while not self.done:
                self.run_epoch()
        finally:
            self.source.close()
            self.progress.close()

    def run_epoch(self) -> None:
        """The rest of the current epoch (from `consumed`), or until the run is done."""
        st = self.st
        plan = self.source.epoch(st.epoch, st.consumed)
        self.lr = self.schedule.apply(self.opt, st.epoch)
        batches = iter(plan.batches)
        for k, size in enumerate(plan.step_sizes):
            t0 = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - t0
            self.step(batch, waited)
            st.step, st.consumed = st.step + 1, st.consumed + size
            self.step_times.append(time.perf_counter() - t0)
            self.after_step(epoch_end=k == len(plan.step_sizes) - 1)
            self.step_ends.append(time.perf_counter())
            if self.done:
                return
        if not plan.step_sizes:  # resumed exactly at the end of an epoch
            st.epoch, st.consumed = st.epoch + 1, 0

    def step(self, batch: dict[str, Any], waited: float) -> None:
        """One optimizer step on this rank's batch (a rank whose videos were all broken replays its last
        batch with weight 0, so DDP's collectives stay in step)."""
        skipped = int(batch.pop("skipped", 0))
        videos, clips = batch["frames"].shape[:2] if "frames" in batch else (0, 0)
        weight = 1.0
        if videos == 0:
            if self.last_batch is None:
                raise RuntimeError(f"rank {self.rank}: all {skipped} videos of its first batch are broken; "
                                   "check the data set with `vpace verify-data`")
            batch, weight = self.last_batch, 0.0
        else:
            batch = self.last_batch = to_device(batch, self.device)
        generator = torch.Generator().manual_seed(step_seed(self.cfg.run.seed, self.st.step, self.rank))
        loss, metrics = train_step(self.ddp, self.opt, batch, generator, self.forward_loss,
                                   scaler=self.scaler, amp_dtype=self.amp_dtype, weight=weight)
        self.window.add(self.st.step + 1, loss, metrics, weight, videos=videos, clips=videos * clips,
                        skipped=skipped, data_wait_s=waited)

    def after_step(self, epoch_end: bool) -> None:
        """Log window, epoch end, checkpoint: each at steps every rank agrees on."""
        st, cfg = self.st, self.cfg
        ckpt_now = epoch_end or self.done or st.step % cfg.scale.checkpoint_every == 0
        window: dict[str, float] = {}
        if ckpt_now or st.step % self.log_every == 0:
            window = self.window.flush(st, self.rank, self.world)
            st.history["steps"].append({"step": st.step, "epoch": st.epoch, **window, "lr": self.lr,
                                        "world_size": self.world})
            self.windows += 1
            self.say_if_starved(window)
        extra: dict[str, float] = {}
        if epoch_end:
            st.history["epochs"].append(epoch_row(st, self.lr, self.world))
            st.epoch, st.consumed = st.epoch + 1, 0
        if self.rank == 0 and (epoch_end or self.done) and self.spec.epoch_metrics is not None:
            extra = self.spec.epoch_metrics(self.model.backbone, cfg, st.epoch, self.done)
            if epoch_end:
                st.history["epochs"][-1].update(extra)
        self.progress.step(st.step, window or None)
        if ckpt_now:
            self.save_and_report({**window, **extra})
        if epoch_end:
            self.progress.epoch_end(st.history)

    def say_if_starved(self, window: dict[str, float]) -> None:
        """Once per attempt, on rank 0: the data path cannot keep up (`data_wait_frac` is in every row)."""
        frac = window.get("data_wait_frac", 0.0)
        if self.rank == 0 and not self.starved_said and self.windows > 1 and frac > STARVED_FRAC:
            self.starved_said = True
            log.warning("data-starved: up to step %d the workers waited for data %.0f%% of the time; %s",
                        self.st.step, 100 * frac, STARVED_HINT)

    def save_and_report(self, window: dict[str, float]) -> None:
        """All ranks report (a barrier); rank 0 attaches an atomically written checkpoint."""
        import ray.train

        st = self.st
        metrics: dict[str, Any] = {"step": st.step, "epoch": st.epoch, "world_size": self.world,
                                   "lr": self.lr, "skipped_total": st.skipped_total, **window,
                                   "steps_this_attempt": len(self.step_times)}
        if len(self.step_times) > 4:  # steady state: the first steps pay for loader start-up
            metrics["step_time_s"] = statistics.median(self.step_times[3:])
        if len(self.step_ends) > 4:  # (the current step's end is recorded after this report)
            metrics["wall_per_step_s"] = (self.step_ends[-1] - self.step_ends[3]) / (len(self.step_ends) - 4)
        rngs = _all_rng_states(self.world)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                         "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                         "scheduler": self.schedule.state_dict(), "loop": st.to_dict(), "rng": rngs,
                         "config": self.cfg.to_dict(), "world_size": self.world}
                meta = {"step": st.step, "epoch": st.epoch, "task": self.spec.name, "method": self.cfg.method,
                        "backbone": self.cfg.model.backbone, "world_size": self.world,
                        "backbone_prefix": module_prefix(self.model, self.model.backbone)}
                path = save_checkpoint(Path(tmp) / "c", state, meta, {HISTORY_FILE: st.history,
                                                                      REPORT_FILE: metrics})
                ckpt = ray.train.Checkpoint.from_directory(path)
            ray.train.report(metrics, checkpoint=ckpt,
                             checkpoint_dir_name=checkpoint_dir_name(st.step, self.taken))
