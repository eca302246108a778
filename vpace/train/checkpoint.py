"""Checkpoints: one directory per save, written atomically, loadable with `weights_only=True`.

Layout of a checkpoint directory (what `ray.train.report(checkpoint=...)` uploads):
  state.pt   - torch.save of plain containers + tensors only (model, optimizer, scaler, objective incl. the
               RSPNet queue, step/epoch/consumed, RNG, metric history, config), so `torch.load(...,
               weights_only=True)` never has to unpickle arbitrary objects.
  meta.json  - step, epoch, task, backbone name and where the backbone sits in the model's state dict;
               readable without torch for listings.
Why atomic: a crash (or `os._exit` in a fault test) mid-save must never leave a directory that looks like a
checkpoint but is truncated. We write into a hidden sibling and `os.replace` it into place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = "vpace-checkpoint-1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any],
                    json_files: dict[str, Any] | None = None) -> Path:
    """Write `state` (+ `meta`, + small JSON side files) as checkpoint directory `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1, default=str))
        for name, obj in (json_files or {}).items():
            (tmp / name).write_text(json.dumps(obj, default=str))
        _fsync_dir(tmp)
        if path.exists():  # a directory cannot be os.replace'd onto a non-empty one: move the old one aside
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILE).read_text())


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint's state with `weights_only=True` (no arbitrary unpickling)."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"not a vpace checkpoint (no {STATE_FILE}): {path}")
    return torch.load(f, map_location=map_location, weights_only=True)


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / STATE_FILE).is_file() and (p / META_FILE).is_file()


def find_latest(run_dir_or_ckpt: str | os.PathLike) -> Path:
    """The checkpoint itself, or the one with the highest step under a run directory."""
    p = Path(run_dir_or_ckpt)
    if is_checkpoint(p):
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"no run directory or checkpoint at {p}")
    found = [(read_meta(c).get("step", -1), c.name, c) for c in p.iterdir()
             if c.is_dir() and not c.name.startswith(".") and is_checkpoint(c)]
    if not found:
        raise FileNotFoundError(f"no checkpoint (a folder with {STATE_FILE} + {META_FILE}) under {p}")
    return max(found)[2]


# --------------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ export


def module_prefix(root: nn.Module, sub: nn.Module) -> str:
    """State-dict prefix of `sub` inside `root` ('' if it is root): export finds the backbone by it."""
    for name, mod in root.named_modules():
        if mod is sub:
            return f"{name}." if name else ""
    raise ValueError(f"{type(sub).__name__} is not a submodule of {type(root).__name__}")


def backbone_state(state: dict[str, Any], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefix = meta.get("backbone_prefix", "")
    model = state["model"]
    out = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"checkpoint has no tensors under the backbone prefix {prefix!r}")
    return out


def export_backbone(run_dir_or_ckpt: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the backbone weights of a run's latest (or the given) checkpoint to a .safetensors file."""
    from safetensors.torch import save_file

    ckpt = find_latest(run_dir_or_ckpt)
    meta = read_meta(ckpt)
    tensors = {k: v.detach().contiguous().clone() for k, v in backbone_state(load_state(ckpt), meta).items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {k: str(meta.get(k, "")) for k in ("backbone", "task", "step", "epoch", "method")}
    info["source"] = str(ckpt)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    save_file(tensors, str(tmp), metadata=info)
    os.replace(tmp, out)
    return out
