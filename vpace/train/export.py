"""Export: the backbone of a run's latest good checkpoint as a `.safetensors` file (what evaluation and users
load), found by the state-dict prefix recorded in the checkpoint's meta."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vpace.train.checkpoint import CheckpointError, load_latest


def module_prefix(root: nn.Module, sub: nn.Module) -> str:
    """State-dict prefix of `sub` inside `root` ('' if it is root): export finds the backbone by it."""
    for name, mod in root.named_modules():
        if mod is sub:
            return f"{name}." if name else ""
    raise ValueError(f"{type(sub).__name__} is not a submodule of {type(root).__name__}")


def backbone_state(state: dict[str, Any], meta: dict[str, Any], path: str | os.PathLike
                   ) -> dict[str, torch.Tensor]:
    prefix = meta.get("backbone_prefix", "")
    out = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(path, f"no tensors under the backbone prefix {prefix!r}")
    return out


def export_backbone(run_dir_or_ckpt: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the backbone weights of a run's latest (or the given) checkpoint to a .safetensors file."""
    from safetensors.torch import save_file

    ckpt, state, meta = load_latest(run_dir_or_ckpt)
    tensors = {k: v.detach().contiguous().clone() for k, v in backbone_state(state, meta, ckpt).items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {k: str(meta.get(k, "")) for k in ("backbone", "task", "step", "epoch", "method")}
    info["source"] = str(ckpt)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    save_file(tensors, str(tmp), metadata=info)
    os.replace(tmp, out)
    return out
