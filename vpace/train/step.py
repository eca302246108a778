"""One optimizer step, written once: the worker loop, fine-tuning and the training benchmarks all call it.

`train_step` is forward + loss (the spec's `forward_loss`, under autocast), backward, optimizer step. Nothing
in it reads a value back from the GPU: metrics stay device tensors (`vpace.train.metrics`). A momentum
encoder updates inside the model's forward, as in moco, so there is no after-step hook.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from vpace.config import OptimConfig
from vpace.objectives import Metrics

ForwardLoss = Callable[[nn.Module, dict[str, Any], torch.Generator], tuple[Tensor, Metrics]]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any],
               generator: torch.Generator, forward_loss: ForwardLoss, *,
               scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
               weight: float = 1.0) -> tuple[Tensor, Metrics]:
    """Forward, loss, backward and step on a device-resident batch; returns (detached loss, metrics).

    `amp_dtype`: autocast dtype (None: full precision); `scaler`: fp16's loss scaler; `weight` 0 steps on a
    batch that must not count (all of this rank's videos were broken) while keeping DDP's collectives in step.
    """
    device_type = next(model.parameters()).device.type
    autocast = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with autocast:
        loss, metrics = forward_loss(model, batch, generator)
    opt.zero_grad(set_to_none=True)
    scaled = loss * weight if weight != 1.0 else loss
    if scaler is not None:
        scaler.scale(scaled).backward()
        scaler.step(opt)  # (reads its inf check back: fp16 only; bf16 needs no scaler)
        scaler.update()
    else:
        scaled.backward()
        opt.step()
    return loss.detach(), metrics


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch on `device`; from pinned memory (the loaders pin on CUDA) the copy is asynchronous."""
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def precision(o: OptimConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype, loss scaler): bf16 on a GPU that has it, else fp16 with a scaler; None off-GPU."""
    if not (o.amp and device.type == "cuda"):
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def build_optimizer(o: OptimConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer gets: parameters that take gradients (never a momentum encoder)."""
    return [p for p in model.parameters() if p.requires_grad]


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
