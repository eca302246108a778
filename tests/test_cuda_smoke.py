"""CUDA smoke tests of the layers above the kernels: models, objectives and the training step.

Each runs the CUDA path the way training does (bf16 autocast, channels_last_3d, the fused Triton augment on
the device) and compares it with the same computation in fp32 on the CPU from the same weights and inputs:
the CPU path is the one the rest of the suite checks against its references. The step also runs under
``torch.cuda.set_sync_debug_mode("error")``: no host sync between log windows. Skipped without CUDA.
"""

import copy
import math
from functools import partial

import pytest
import torch
from conftest import needs_cuda

from benchmarks.train_step import in_memory_dataset, make_step
from vpace.config import load_config
from vpace.models import BACKBONES, build_backbone
from vpace.objectives import build_objective
from vpace.train.metrics import Window
from vpace.train.pretraining import PRETRAIN
from vpace.train.state import LoopState
from vpace.train.step import build_optimizer, precision, to_device, train_step, trainable

pytestmark = needs_cuda
BF16_REL = 5e-2  # bf16 autocast through a whole network: a few % of the output's scale


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("name", BACKBONES)
def test_models_bf16_channels_last_match_fp32_cpu(name):
    """Every backbone at the training clip size: CUDA bf16 autocast + channels_last_3d vs CPU fp32 (eval
    mode: batch norm uses its running statistics, so both see the same function)."""
    torch.manual_seed(0)
    cpu = build_backbone(name).eval()
    gpu = copy.deepcopy(cpu).cuda().to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 3, 16, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = cpu(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = gpu(x.cuda().contiguous(memory_format=torch.channels_last_3d))
    assert got.shape == want.shape == (2, cpu.feature_dim) and torch.isfinite(got).all()
    assert _rel_err(got, want) <= BF16_REL


@pytest.mark.parametrize("method", ["pace_ctr", "rspnet"])
def test_objectives_forward_backward_bf16_match_fp32_cpu(method):
    """The method's model + loss (pace_ctr: the fused contrastive kernel on CUDA) under bf16 autocast: the
    loss matches CPU fp32 from the same weights and clips; every trainable parameter gets a finite grad."""
    n = 3 if method == "rspnet" else 2
    cfg = load_config("smoke", overrides=[f"method={method}", f"data.clips_per_video={n}"])
    torch.manual_seed(0)
    net_cpu, loss_fn = build_objective(cfg, build_backbone(cfg.model.backbone))
    net_gpu = copy.deepcopy(net_cpu).cuda()
    videos = 4
    clips = torch.randn(videos * n, 3, 8, 56, 56, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 0, 1] if method == "rspnet" else [0, 2]).repeat(videos)
    meta = {"pace_label": labels, "video_id": torch.arange(videos).repeat_interleave(n)}
    want, _ = loss_fn(net_cpu(clips), meta)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, metrics = loss_fn(net_gpu(clips.cuda()), {k: v.cuda() for k, v in meta.items()})
    got.backward()
    assert torch.isfinite(got) and abs(got.item() - want.item()) <= BF16_REL * abs(want.item())
    grads = [p.grad for p in net_gpu.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_training_step_on_cuda_matches_cpu():
    """The worker loop's step on CUDA (fused Triton augment on the device, bf16 autocast, channels_last_3d)
    gives the CPU fp32 step's loss (C-kernel augment) from the same weights, batch and augmentation draw, and
    updates the weights."""
    cfg = load_config("smoke", overrides=["model.channels_last=true", "optim.batch_size=4"])
    cpu_step, clips, _ = make_step(cfg, "cpu")
    gpu_step, _, task = make_step(cfg, "cuda")
    before = [p.detach().clone() for p in task.parameters()]
    want, got = cpu_step().item(), gpu_step().item()
    assert clips == 4 * cfg.data.clips_per_video
    assert abs(got - want) <= BF16_REL * abs(want)
    after = task.parameters()
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("method", ["pace_ctr", "rspnet"])
def test_training_steps_never_wait_for_the_gpu(method):
    """Steps of the worker loop's step (pinned batch to the device, fused augment with CPU-drawn params,
    model + loss under bf16 autocast, backward, optimizer, the metric window's add) under
    ``set_sync_debug_mode("error")``, which raises on any synchronising CUDA call; then the window's one read
    at its boundary gives finite metrics for every step. The first step (compiles, cuDNN autotune, lazy
    initialisation) runs before, as the loop's first window does."""
    n = 3 if method == "rspnet" else 2
    overrides = [f"method={method}", f"data.clips_per_video={n}", "optim.batch_size=4"]
    cfg = load_config("smoke", overrides=overrides)
    device = torch.device("cuda")
    model = PRETRAIN.build_model(cfg).to(device).train()
    opt = build_optimizer(cfg.optim, trainable(model), cfg.optim.lr)
    amp_dtype, scaler = precision(cfg.optim, device)
    ds = in_memory_dataset(cfg)
    batch = PRETRAIN.collate([ds[i] for i in range(cfg.optim.batch_size)])
    batch = {k: v.pin_memory() for k, v in batch.items() if k != "skipped"}
    window = Window(device)

    def step(i: int) -> None:
        forward_loss = partial(PRETRAIN.forward_loss, cfg=cfg)
        loss, metrics = train_step(model, opt, to_device(batch, device), torch.Generator().manual_seed(i),
                                   forward_loss, scaler=scaler, amp_dtype=amp_dtype)
        window.add(i, loss, metrics, 1.0, clips=float(cfg.optim.batch_size * n))

    step(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            step(i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    values = window.flush(LoopState(), rank=0, world=1)
    assert window.steps == [] and values and all(math.isfinite(v) for v in values.values())
