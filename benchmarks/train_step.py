"""The training step on a GPU (step 4 of ``make gpu-check``): clips/s and peak memory of the real step.

The step is the one a Ray Train worker runs, ``vpace.train.step.train_step`` on pre-training's
``forward_loss``, minus Ray: the pinned batch moves to the device, the fused augmentation runs there, the
model + loss under the loop's precision (bf16 autocast where supported, ``channels_last_3d`` per
``model.channels_last``), backward and the optimizer step. Frames are synthetic uint8 videos already in
memory, cut into clips by the real ``PaceClipDataset`` sampling and collate (no decoding), so the step is
measured alone.

Variants: the fused augment (Triton) vs the batched eager augment (``backend="eager"``, forced through the
op's default-backend choice), ``channels_last_3d`` on and off, at the paper's R(2+1)D setting (16 x 112 x 112
from 128 x 171, batch 30 videos x 2 clips, pace + same-context contrast); then S3D-G at 64 x 224 if the time
budget allows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
from torch import Tensor

from benchmarks.common import Checks, bench, device_label, timing_rows

VIDEOS, VIDEO_FRAMES = 8, 175  # distinct synthetic videos (items cycle over them), 7 s at 25 fps
EVERY = [("fused", True), ("eager", True), ("fused", False), ("eager", False)]  # (augment, channels_last_3d)
# setting -> (named config, overrides, variants)
SETTINGS = {
    "paper": ("paper-r21d", [], EVERY),
    "s3dg": ("paper-s3dg", ["optim.batch_size=8"], EVERY[:1]),  # 30 / 4 workers: the 4-worker recipe's batch
    "small": ("smoke", ["data.clip_len=8", "data.height=36", "data.width=44", "augment.crop=32",
                        "optim.batch_size=1", "scale.min_workers=1", "scale.max_workers=1"],
              [EVERY[0], EVERY[3]]),  # the no-GPU dry run, on the CPU
}


def in_memory_dataset(cfg, videos: int = VIDEOS, frames: int = VIDEO_FRAMES, seed: int = 0):
    """``cfg``'s pace-clip data set over random uint8 videos held in memory (already at the decode size)."""
    from vpace.data import PaceClipDataset, VideoEntry, VideoIndex
    from vpace.data.reader import FrameSource

    d = cfg.data
    rng = np.random.default_rng(seed)
    clips = [rng.integers(0, 256, (frames, d.height, d.width, 3), dtype=np.uint8) for _ in range(videos)]

    class MemoryVideo(FrameSource):
        def __init__(self, video_id: int) -> None:
            self.path, self.num_frames, self.fps = f"<memory {video_id}>", frames, 25.0
            self.video_id = video_id

        def read_unique(self, unique: np.ndarray) -> np.ndarray:
            return clips[self.video_id][unique]

    class MemoryPaceClips(PaceClipDataset):
        def open_source(self, video_id: int) -> FrameSource:  # the data set's reader hook: memory, not a file
            return MemoryVideo(video_id)

    entries = [VideoEntry(f"memory/{i}.mp4", 0, "all") for i in range(videos)]
    index = VideoIndex(entries, ["synthetic"], "memory")
    return MemoryPaceClips(index, pace_set=cfg.pace.paces, clip_len=d.clip_len,
                           clips_per_video=d.clips_per_video, height=d.height, width=d.width, seed=seed)


def make_step(cfg, device: str | torch.device, seed: int = 0) -> tuple[Callable[[], Tensor], int, object]:
    """One optimizer step as the worker loop takes it, on a fixed in-memory batch: (step, clips per step, the
    model). The model is seeded, so steps built with the same ``cfg`` and ``seed`` start from the same
    weights, and every call of ``step`` draws the same augmentation."""
    from vpace.train.pretraining import PRETRAIN
    from vpace.train.step import build_optimizer, precision, to_device, train_step, trainable

    device = torch.device(device)
    torch.manual_seed(seed)
    model = PRETRAIN.build_model(cfg).to(device).train()
    opt = build_optimizer(cfg.optim, trainable(model), cfg.optim.lr)
    amp_dtype, scaler = precision(cfg.optim, device)
    forward_loss = partial(PRETRAIN.forward_loss, cfg=cfg)
    ds = in_memory_dataset(cfg, seed=seed)
    batch = PRETRAIN.collate([ds[i] for i in range(cfg.optim.batch_size)])
    if batch.pop("skipped"):
        raise RuntimeError("the in-memory data set skipped videos: its reader hook no longer applies")
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}

    def step() -> Tensor:
        loss, _ = train_step(model, opt, to_device(batch, device), torch.Generator().manual_seed(seed),
                             forward_loss, scaler=scaler, amp_dtype=amp_dtype)
        return loss

    return step, int(batch["frames"].shape[0] * batch["frames"].shape[1]), model


@contextlib.contextmanager
def augment_backend(name: str | None) -> Iterator[list[int]]:
    """Within the block, the augmentation op's default backend (what the step gets) is ``name`` (None: as it
    is). Yields a list that grows by one per forced call, so a step that bypasses the choice is caught."""
    import vpace_kernels.pace_jitter as PJ

    calls: list[int] = []
    if name is None:
        yield calls
        return
    original = PJ.pick_backend
    PJ.pick_backend = lambda frames: calls.append(1) or name
    try:
        yield calls
    finally:
        PJ.pick_backend = original


def _peak_mb(step: Callable[[], Tensor], device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def gpu_rows(device: str, checks: Checks, setting: str = "paper") -> list[dict]:
    """Step 4 of ``make gpu-check`` for one of ``SETTINGS``: clips/s and peak memory per variant. A non-finite
    loss, or variants whose first losses differ (same weights, same batch, same augmentation draw: the
    augment versions and memory formats must agree), are recorded in ``checks``."""
    from vpace.config import load_config

    name, overrides, variants = SETTINGS[setting]
    device_t, rows = torch.device(device), []
    first_loss = None
    for aug, channels_last in variants:
        cfg = load_config(name, overrides=[*overrides, f"model.channels_last={channels_last}"])
        o, d = cfg.optim, cfg.data
        precision = "bf16" if device_t.type == "cuda" else "fp32"
        shape = (f"{cfg.model.backbone} b{o.batch_size}x{d.clips_per_video} T{d.clip_len} "
                 f"{cfg.augment.crop}px {cfg.method} {precision}")
        provider = f"{aug}_augment" + ("_channels_last" if channels_last else "")
        row = dict(kernel="train_step", provider=provider, shape=shape)
        try:
            with augment_backend("eager" if aug == "eager" else None) as forced:
                step, clips, _ = make_step(cfg, device_t)
                loss = float(step())
                t = bench(step, device_t, budget_ms=1500, reps=1 if setting == "small" else 3, warmup=0)
                peak = _peak_mb(step, device_t)
        except torch.OutOfMemoryError:  # a size that does not fit is a finding, not a wrong result
            rows.append({**row, "metric": "step_ms", "value": "out of memory"})
            print(f"  {name} {provider}: out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        if aug == "eager" and not forced:
            checks.fail(f"train_step {shape}: the eager-augment variant never reached the op's backend "
                        "choice, so it did not run the eager augment")
        if not np.isfinite(loss):
            checks.fail(f"train_step {shape} {provider}: loss is {loss}")
        first_loss = loss if first_loss is None else first_loss
        checks.within(f"train_step {shape} {provider}: first loss vs the first variant's (relative)",
                      abs(loss - first_loss) / max(abs(first_loss), 1e-6), 5e-2)
        rows += timing_rows(row, "step_ms", t, 1e3)
        rows += [{**row, "metric": "clips_per_s", "value": f"{clips / t.median:.1f}"},
                 {**row, "metric": "peak_mem_mb", "value": f"{peak:.0f}"}]
        print(f"  {name} {provider}: {clips / t.median:.1f} clips/s, peak {peak:.0f} MB", flush=True)
        del step
        torch.cuda.empty_cache()  # (a no-op without CUDA)
    return [{**r, "device": device_label(device)} for r in rows]
