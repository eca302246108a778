"""The per-worker training loop shared by every `Task` (pre-training now, fine-tuning in `vpace.eval`).

One attempt of a Ray Train worker: build the task's model, restore the latest checkpoint (after a failure, a
resize, or a re-run of the same run name), wrap it in DDP, then step through the epochs with the elastic
sampler. The configured global batch is split over the *current* world size and the lr follows the actual
global batch, so a resized group keeps the recipe. Every `checkpoint_every` steps and at each epoch end all
ranks call `ray.train.report`; rank 0 attaches the checkpoint.

Cross-rank metrics are all-reduced only at flush points (log windows, checkpoints) that depend on the step
number alone, so every rank reaches the same collectives.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from vpace.config import Config, OptimConfig
from vpace.train import checkpoint as ckpt_io
from vpace.train.progress import MeanMeter, Progress, is_remote, local_path
from vpace.train.sampler import ElasticBatchSampler, per_worker_batch, step_bounds
from vpace.train.task import Task

FAULT_MARKER = ".vpace_fault_injected_step{step}"
HISTORY_FILE = "history.json"  # the metric history, readable by the driver without unpickling the state


class StepSchedule:
    """lr = lr * (actual global batch / base_batch_size) * gamma ** (epoch // lr_step_epochs).

    A pure function of (epoch, global batch) instead of a stateful torch scheduler: after a resize the global
    batch changes and the lr must follow it, whatever happened before.
    """

    def __init__(self, o: OptimConfig, global_batch: int) -> None:
        self.base, self.gamma, self.every = o.lr, o.lr_gamma, o.lr_step_epochs
        self.scale = global_batch / o.base_batch_size

    def lr(self, epoch: int) -> float:
        return self.base * self.scale * self.gamma ** (epoch // self.every)

    def apply(self, opt: torch.optim.Optimizer, epoch: int) -> float:
        lr = self.lr(epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, float]:
        return {"base_lr": self.base, "gamma": self.gamma, "step_epochs": self.every,
                "batch_scale": self.scale}


def build_optimizer(o: OptimConfig, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)


@dataclass
class LoopState:
    """Progress that must survive restarts (stored in every checkpoint)."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # items of the current epoch's permutation already trained on (all ranks)
    history: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"epochs": [], "steps": [], "attempts": []})
    epoch_sums: dict[str, float] = field(default_factory=dict)  # global metric sums of the current epoch
    epoch_counts: dict[str, float] = field(default_factory=dict)
    skipped_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def planned_steps(num_items: int, global_batch: int, world: int, st: LoopState, o: OptimConfig) -> int:
    """Total steps of the run if the world size stays as it is now (for the progress bar)."""
    rest = len(step_bounds(num_items - st.consumed, global_batch, world)) if st.epoch < o.epochs else 0
    per_epoch = len(step_bounds(num_items, global_batch, world))
    total = st.step + rest + per_epoch * max(0, o.epochs - st.epoch - 1)
    return min(total, o.max_steps) if o.max_steps else total


def run_finished(o: OptimConfig, step: int, epoch: int) -> bool:
    """The run's end: `epochs` epochs completed, or `max_steps` steps taken."""
    return epoch >= o.epochs or (o.max_steps is not None and step >= o.max_steps)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _allreduce(t: torch.Tensor) -> list[float]:
    """Sum a float64 vector over the workers (one collective) and read it back (one device sync)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _all_rng_states(world: int) -> list[dict[str, Any]]:
    state = ckpt_io.rng_state()
    if world == 1 or not dist.is_initialized():
        return [state]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, state)
    return out


def run_dir_of(cfg: Config) -> str:
    return f"{cfg.run.storage.rstrip('/')}/{cfg.run.name}"


def maybe_inject_fault(cfg: Config, step: int, rank: int) -> None:
    """Test-only: fail rank 0 at `run.fail_at_step`, once per run (a marker in the run dir remembers it)."""
    if cfg.run.fail_at_step != step or rank != 0:
        return
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(run_dir_of(cfg))
    marker = f"{root}/{FAULT_MARKER.format(step=step)}"
    if fs.get_file_info(marker).type != pyarrow.fs.FileType.NotFound:
        return
    fs.create_dir(root)
    with fs.open_output_stream(marker) as f:
        f.write(f"{cfg.run.fail_mode} pid={os.getpid()}\n".encode())
    if cfg.run.fail_mode == "exit":
        os._exit(1)
    raise RuntimeError(f"injected fault at step {step} (run.fail_at_step)")


class Flusher:
    """Window metrics -> global (all-reduced) values; adds them to the epoch sums and the step history.

    A float metric is a per-step value, averaged over the window's steps. A Tensor metric ``[hits, total]``
    (the per-pace tallies) stays on the device, is summed over steps and divided once, so window and epoch
    values are exact ratios over their clips. Both kinds and the clip/video/skip counts travel in the one
    all-reduce of each flush.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.window, self.keys = device, MeanMeter(), None
        self.ratio_keys: list[str] = []
        self.ratios: torch.Tensor | None = None  # [len(ratio_keys), 2] running (hits, total), on the device
        self.clips = self.videos = self.skipped = 0
        self.t0 = time.perf_counter()

    def add(self, metrics: dict[str, float | torch.Tensor], videos: int, clips: int, skipped: int) -> None:
        if self.keys is None:  # fixed by the first step: every rank runs the same task, so the same keys
            self.keys = sorted(k for k, v in metrics.items() if not isinstance(v, torch.Tensor))
            self.ratio_keys = sorted(k for k, v in metrics.items() if isinstance(v, torch.Tensor))
        self.window.add({k: metrics[k] for k in self.keys if k in metrics})
        if self.ratio_keys and metrics:  # ({} for a step that counts nothing)
            pairs = torch.stack([metrics[k] for k in self.ratio_keys]).to(self.device, torch.float64)
            self.ratios = pairs if self.ratios is None else self.ratios + pairs
        self.videos += videos
        self.clips += clips
        self.skipped += skipped

    def flush(self, st: LoopState) -> dict[str, float]:
        keys, rkeys = self.keys or [], self.ratio_keys
        local = ([self.window.sums.get(k, 0.0) for k in keys]
                 + [float(self.window.counts.get(k, 0)) for k in keys]
                 + [float(self.clips), float(self.videos), float(self.skipped)])
        vec = torch.tensor(local, dtype=torch.float64, device=self.device)
        if rkeys:
            ratios = self.ratios if self.ratios is not None else vec.new_zeros((len(rkeys), 2))
            vec = torch.cat([vec, ratios.flatten()])  # hits_0, total_0, hits_1, total_1, ...
        g = _allreduce(vec)
        n, r0 = len(keys), 2 * len(keys) + 3
        secs = max(time.perf_counter() - self.t0, 1e-9)
        # (key, numerator, denominator): a mean sums values over steps, a ratio sums hits over clips
        parts = [(k, g[i], g[n + i]) for i, k in enumerate(keys)]
        parts += [(k, g[r0 + 2 * i], g[r0 + 2 * i + 1]) for i, k in enumerate(rkeys)]
        out = {k: num / den for k, num, den in parts if den > 0}
        out["clips_per_s"] = g[2 * n] / secs
        for k, num, den in parts:
            st.epoch_sums[k] = st.epoch_sums.get(k, 0.0) + num
            st.epoch_counts[k] = st.epoch_counts.get(k, 0.0) + den
        totals = (("clips", g[2 * n]), ("videos", g[2 * n + 1]), ("skipped", g[2 * n + 2]), ("seconds", secs))
        for k, v in totals:
            st.epoch_sums[k] = st.epoch_sums.get(k, 0.0) + v
        st.skipped_total += int(g[2 * n + 2])
        self.window.reset()
        self.ratios = None
        self.clips = self.videos = self.skipped = 0
        self.t0 = time.perf_counter()
        return out


def _epoch_row(st: LoopState, epoch: int, lr: float, world: int) -> dict[str, Any]:
    s, c = st.epoch_sums, st.epoch_counts
    row: dict[str, Any] = {"epoch": epoch, "step": st.step}
    row.update({k: s[k] / c[k] for k in sorted(c) if c[k] > 0})
    row.update(videos=int(s.get("videos", 0)), skipped=int(s.get("skipped", 0)),
               clips_per_s=s.get("clips", 0.0) / max(s.get("seconds", 0.0), 1e-9), lr=lr, world_size=world)
    st.epoch_sums, st.epoch_counts = {}, {}
    return row


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` = {"task": Task, "cfg": Config, "resume": ResumePlan | None}."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    WorkerLoop(config["task"], config["cfg"], ctx.get_world_rank(), ctx.get_world_size(),
               ray.train.torch.get_device(), config.get("resume")).run()


class WorkerLoop:
    """One attempt of one Ray Train worker: restore -> DDP -> epochs of elastic batches -> checkpoints."""

    def __init__(self, task: Task, cfg: Config, rank: int, world: int, device: torch.device,
                 resume: ckpt_io.ResumePlan | None = None) -> None:
        import ray.train.torch

        self.task, self.cfg, self.rank, self.world, self.device = task, cfg, rank, world, device
        self.resume = resume  # the driver's plan_resume: which registered checkpoint to pass over
        o, seed = cfg.optim, cfg.run.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        if device.type == "cpu":
            torch.set_num_threads(max(1, int(cfg.scale.cpus_per_worker)))
        model = task.setup(cfg, device)
        loaded = self._restore()
        task.wrap(ray.train.torch.prepare_model(model, parallel_strategy_kwargs=task.ddp_kwargs()))
        # one record per attempt that reaches a checkpoint: where it resumed and on how many workers
        self.st.history.setdefault("attempts", []).append({"start_step": self.st.step, "world_size": world})

        self.batch = per_worker_batch(o.batch_size, world)  # the global batch re-split over this world size
        self.schedule = StepSchedule(o, self.batch * world)
        self.opt = build_optimizer(o, task.parameters(), self.schedule.lr(self.st.epoch))
        self.use_amp = o.amp and device.type == "cuda"
        bf16 = self.use_amp and torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp and not bf16 else None
        if loaded is not None:
            self.opt.load_state_dict(loaded["optimizer"])
            if self.scaler is not None and loaded.get("scaler"):
                self.scaler.load_state_dict(loaded["scaler"])
        self.lr = self.schedule.apply(self.opt, self.st.epoch)

        self.dataset = task.dataset(cfg)
        self.n_items = len(self.dataset)
        run_dir = run_dir_of(cfg)
        total = planned_steps(self.n_items, self.batch * world, world, self.st, o)
        self.log_every = max(1, min(20, total // 50))
        out = local_path(run_dir) if not is_remote(run_dir) else Path.cwd() / "progress"
        self.progress = Progress(out, total, self.st.step, enabled=rank == 0, desc=task.name)
        self.flusher = Flusher(device)
        self.step_times: list[float] = []  # compute + data wait of each step of this attempt
        self.step_ends: list[float] = []  # wall clock after each step, reports included
        self.last_batch: dict[str, Any] | None = None

    def _restore(self) -> dict[str, Any] | None:
        """Load the latest checkpoint of the run (after a failure, a resize or a re-run), if any."""
        import ray.train

        self.st = LoopState()
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if self.resume is not None and Path(checkpoint.path).name == self.resume.skip:
            checkpoint = ray.train.Checkpoint(self.resume.use)  # Ray's latest cannot be loaded
        with checkpoint.as_directory() as d:
            loaded = ckpt_io.load_state(d)  # CheckpointError: not retried (vpace.train.fail_fast)
        self.task.load_state_dict(loaded["model"])
        self.st = LoopState(**loaded["loop"])
        rngs = loaded.get("rng") or []
        if self.rank < len(rngs):
            ckpt_io.set_rng_state(rngs[self.rank])
        return loaded

    @property
    def done(self) -> bool:
        return run_finished(self.cfg.optim, self.st.step, self.st.epoch)

    def train_step(self, batch: dict[str, Any]) -> tuple[dict[str, float | torch.Tensor], int, int, int]:
        """Forward/backward/update of one local batch; returns (metrics, videos, clips, skipped)."""
        skipped = int(batch.pop("skipped", 0))
        videos, clips = self.task.batch_size(batch)
        weight = 1.0
        if videos == 0:  # every video of this rank's batch was broken: keep DDP in step, add nothing
            if self.last_batch is None:
                raise RuntimeError(f"rank {self.rank}: all {skipped} videos of its first batch are broken; "
                                   "check the data set with `vpace verify-data`")
            batch, weight = self.last_batch, 0.0
        else:
            batch = self.last_batch = _to_device(batch, self.device)
        seed = self.cfg.run.seed * 1_000_003 + self.st.step * 1009 + self.rank  # same draw after a restart
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            loss, metrics = self.task.step(batch, torch.Generator().manual_seed(seed))
        self.opt.zero_grad(set_to_none=True)
        loss = loss * weight if weight != 1.0 else loss
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.task.after_optimizer_step()
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise FloatingPointError(f"loss is {metrics.get('loss')} at step {self.st.step + 1} "
                                     f"(rank {self.rank})")
        return (metrics if weight else {}), videos, clips, skipped

    def save_and_report(self, window: dict[str, float]) -> None:
        """All ranks report (a barrier); rank 0 attaches an atomically written checkpoint."""
        import ray.train

        st, task = self.st, self.task
        metrics: dict[str, Any] = {"step": st.step, "epoch": st.epoch, "world_size": self.world,
                                   "lr": self.lr, "skipped_total": st.skipped_total, **window,
                                   "steps_this_attempt": len(self.step_times)}
        if len(self.step_times) > 4:  # steady state: the first steps pay for DataLoader start-up
            metrics["step_time_s"] = statistics.median(self.step_times[3:])
        if len(self.step_ends) > 4:  # (the current step's end is recorded after this report)
            metrics["wall_per_step_s"] = (self.step_ends[-1] - self.step_ends[3]) / (len(self.step_ends) - 4)
        rngs = _all_rng_states(self.world)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                state = {"model": task.state_dict(), "optimizer": self.opt.state_dict(),
                         "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                         "scheduler": self.schedule.state_dict(), "loop": st.to_dict(), "rng": rngs,
                         "config": self.cfg.to_dict(), "world_size": self.world}
                meta = {"step": st.step, "epoch": st.epoch, "task": task.name, "method": self.cfg.method,
                        "backbone": self.cfg.model.backbone, "world_size": self.world,
                        "backbone_prefix": ckpt_io.module_prefix(task.state_root(), task.backbone())}
                path = ckpt_io.save_checkpoint(Path(tmp) / "c", state, meta, {HISTORY_FILE: st.history})
                ckpt = ray.train.Checkpoint.from_directory(path)
            ray.train.report(metrics, checkpoint=ckpt,
                             checkpoint_dir_name=ckpt_io.checkpoint_dir_name(st.step, self.resume))

    def run_epoch(self) -> None:
        """The rest of the current epoch (from `consumed`), or until max_steps."""
        st, cfg = self.st, self.cfg
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(st.epoch)
        sampler = ElasticBatchSampler(self.n_items, self.batch, self.rank, self.world, cfg.run.seed, st.epoch,
                                      st.consumed)
        sizes = sampler.step_sizes()
        if not sizes:  # resumed exactly at the end of an epoch
            st.epoch, st.consumed = st.epoch + 1, 0
            return
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            collate_fn=self.task.collate, pin_memory=self.device.type == "cuda",
                            prefetch_factor=2 if cfg.data.num_workers > 0 else None)
        self.lr = self.schedule.apply(self.opt, st.epoch)
        t_step = time.perf_counter()
        for i, batch in enumerate(loader):
            self.flusher.add(*self.train_step(batch))
            st.step += 1
            st.consumed += sizes[i]
            epoch_end = i == len(sizes) - 1
            maybe_inject_fault(cfg, st.step, self.rank)
            ckpt_now = st.step % cfg.scale.checkpoint_every == 0 or epoch_end or self.done
            window = None
            if ckpt_now or st.step % self.log_every == 0:
                window = self.flusher.flush(st)
                st.history["steps"].append({"step": st.step, "epoch": st.epoch, **window, "lr": self.lr,
                                            "world_size": self.world})
            extra: dict[str, float] = {}
            if epoch_end:
                st.history["epochs"].append(_epoch_row(st, st.epoch, self.lr, self.world))
                st.epoch, st.consumed = st.epoch + 1, 0
            if self.rank == 0 and (epoch_end or self.done):  # e.g. Tune's proxy, reported with the checkpoint
                extra = self.task.epoch_metrics(st.epoch, final=self.done)
                if epoch_end:
                    st.history["epochs"][-1].update(extra)
            self.step_times.append(time.perf_counter() - t_step)
            self.progress.step(st.step, window)
            if ckpt_now:
                self.save_and_report({**(window or {}), **extra})
            if epoch_end:
                self.progress.epoch_end(st.history)
            t_step = time.perf_counter()
            self.step_ends.append(t_step)
            if self.done:
                return

    def run(self) -> None:
        try:
            while not self.done:
                self.run_epoch()
        finally:
            self.progress.close()
