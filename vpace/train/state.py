"""What a run carries across restarts: the loop's progress, the RNG states, and the checkpoint a worker
resumes from (Ray Train's public API: `ray.train.get_checkpoint()`, else the run directory's newest good
checkpoint by the readers' own rule)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpace.paths import is_remote, local_path
from vpace.train.checkpoint import CheckpointError, load_latest, load_state

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Progress that must survive restarts (stored in every checkpoint as `loop`)."""

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


def checkpoint_names(run_dir: str) -> frozenset[str]:
    """Names of the checkpoint folders already in the run directory (new ones must not reuse them)."""
    if is_remote(run_dir):
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(run_dir)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
        return frozenset(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)
    root = local_path(run_dir)
    return frozenset(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else frozenset()


def resume_state(run_dir: str) -> dict[str, Any] | None:
    """The state to resume from: Ray's latest checkpoint, or - when that one does not load (Ray copies a
    checkpoint into the run non-atomically) - the newest good one of a local run directory. None on a fresh
    run. `CheckpointError` when nothing loads: `vpace.train.fail_fast` then ends the run without retries."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as d:
            return load_state(d)
    except CheckpointError as e:
        if is_remote(run_dir):
            raise
        path, state, _ = load_latest(local_path(run_dir))
        log.warning("resuming from %s: Ray's latest checkpoint %s does not load (%s)", path,
                    Path(checkpoint.path).name, e.why)
        return state
