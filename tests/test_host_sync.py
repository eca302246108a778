"""No host sync inside a training step, proved without a GPU on the ``meta`` device.

A meta tensor has a shape and a dtype but no values: ``.item()``, ``bool()``, ``.tolist()`` or a copy back
to the CPU raise on it. So code that runs to the end on meta tensors read nothing from its device. These
tests run the kernels' launch paths (launches are recorded, not run: ``vpace_kernels.launch.recording``)
and a whole pre-training step (augmentation, model, loss, metrics, backward, optimizer) for every method on
meta, and count the host-to-device copies a dispatch mode sees: the step's only one is the augmentation's
packed parameter record, validated on the CPU where it was drawn. ``tests/test_cuda_smoke.py`` checks the
same on a GPU under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from functools import partial

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.train_step import in_memory_dataset
from vpace.augment import augment, sample_params
from vpace.config import load_config
from vpace.train.metrics import Window
from vpace.train.pretraining import PRETRAIN
from vpace.train.step import build_optimizer, to_device, train_step, trainable
from vpace_kernels.contrastive import contrastive_loss
from vpace_kernels.launch import recording
from vpace_kernels.pace_jitter import FRAME_WORDS, HEAD_WORDS

META = torch.device("meta")


class HostToDevice(TorchDispatchMode):
    """Records the shape of every tensor copied from the CPU to another device."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("_to_copy", "copy_"):
            src = next(a for a in args if isinstance(a, torch.Tensor))
            dst = out if isinstance(out, torch.Tensor) else args[0]
            if src.device.type == "cpu" and dst.device.type != "cpu":
                self.copies.append(tuple(src.shape))
        return out


def test_augmentation_validates_on_the_cpu_and_copies_once():
    """Frames and index map on the device, params drawn on the CPU: both launches are made, nothing is read
    back, and the one host-to-device copy is the packed record (validated before it)."""
    b, t, h, w, crop = 3, 8, 40, 52, 32
    frames = torch.empty(b, t, h, w, 3, dtype=torch.uint8, device=META)
    index_map = torch.empty(b, t, dtype=torch.int64, device=META)
    params = sample_params(b, t, h, w, crop=crop, generator=torch.Generator().manual_seed(0))
    assert params.factors.device.type == "cpu"
    with recording() as launches, HostToDevice() as h2d:
        out = augment(frames, index_map, params, backend="triton")
    assert out.device == META and out.shape == (b, 3, t, crop, crop)
    assert [rec.name.split()[0] for rec in launches] == ["[gray_sum", "[pace_jitter"]
    assert h2d.copies == [(HEAD_WORDS + b * t * FRAME_WORDS,)]


def test_bad_params_are_caught_on_the_cpu_before_any_launch():
    frames = torch.empty(2, 4, 40, 52, 3, dtype=torch.uint8, device=META)
    index_map = torch.empty(2, 4, dtype=torch.int64, device=META)
    params = sample_params(2, 4, 40, 52, crop=32, generator=torch.Generator().manual_seed(0))
    params.factors[1, 2, 0] = -1.0
    with recording() as launches, pytest.raises(ValueError, match="params.factors"):
        augment(frames, index_map, params, backend="triton")
    assert launches == []


def test_contrastive_forward_backward_read_nothing_back():
    q = torch.empty(300, 128, device=META, requires_grad=True)
    labels = torch.empty(300, dtype=torch.int64, device=META)
    with recording() as launches, HostToDevice() as h2d:
        loss, stats = contrastive_loss(q, q, labels, return_stats=True, backend="triton")
        loss.backward()
    assert [rec.name.split(",")[0] for rec in launches] == ["[fwd", "[dq", "[dk"]
    assert h2d.copies == [] and q.grad.device == META and stats.rows_without_positive.device == META


@pytest.mark.parametrize("method", ["pace", "pace_ctr", "rspnet"])
def test_a_training_step_reads_nothing_back(method):
    """``vpace.train.step.train_step`` - the spec's forward_loss (augmentation, model, loss, per-pace
    tallies), backward, the optimizer step - plus the metric window's ``add``, on meta: it ends, so no value
    was read; the metrics stay device tensors."""
    n = 3 if method == "rspnet" else 2
    overrides = [f"method={method}", f"data.clips_per_video={n}", "optim.batch_size=2"]
    cfg = load_config("smoke", overrides=overrides)
    model = PRETRAIN.build_model(cfg).to(META).train()
    opt = build_optimizer(cfg.optim, trainable(model), cfg.optim.lr)
    ds = in_memory_dataset(cfg, videos=2, frames=40)
    batch = PRETRAIN.collate([ds[i] for i in range(cfg.optim.batch_size)])
    batch.pop("skipped")
    window = Window(META)
    forward_loss = partial(PRETRAIN.forward_loss, cfg=cfg)
    for step in range(2):
        device_batch = to_device(batch, META)  # (the loop's copy of the batch, before the step)
        with recording() as launches, HostToDevice() as h2d:
            loss, metrics = train_step(model, opt, device_batch, torch.Generator().manual_seed(step),
                                       forward_loss)
            window.add(step, loss, metrics, 1.0, clips=4.0)
        assert len(h2d.copies) == 1, h2d.copies  # the augmentation's parameter record
        assert {rec.name.split()[0] for rec in launches} >= {"[gray_sum", "[pace_jitter"}
        if method == "pace_ctr":
            assert sum(rec.name.startswith("[fwd") for rec in launches) == 1
        assert loss.device == META and all(s.device == META and c.device == META for s, c in metrics.values())
    assert window.pairs.device == META and window.pairs.shape == (len(metrics), 2) and window.steps == [0, 1]
