"""Checkpoints: one directory per save, written atomically, loadable with `weights_only=True`.

Layout of a checkpoint directory (what `ray.train.report(checkpoint=...)` uploads):
  state.pt   - torch.save of plain containers + tensors only (model, optimizer, scaler, objective incl. the
               RSPNet queue, step/epoch/consumed, RNG, metric history, config), so `torch.load(...,
               weights_only=True)` never has to unpickle arbitrary objects.
  meta.json  - step, epoch, task, backbone name and where the backbone sits in the model's state dict;
               readable without torch for listings.
Why atomic: a crash (or `os._exit` in a fault test) mid-save must never leave a directory that looks like a
checkpoint but is truncated. We write into a hidden sibling and `os.replace` it into place. Ray then copies
that directory into `<run>/checkpoint_N` *non*-atomically, so a kill mid-copy can still leave a half-written
`checkpoint_N` (which Ray never registers). Hence one rule for "the latest good checkpoint" (`_first_good`),
used by every reader (export, eval, report): the newest one that loads, each newer broken one named in a
warning; and `plan_resume` checks the one Ray will resume from before any worker starts. A checkpoint that
cannot be loaded raises `CheckpointError` (names the folder and why, never advises unsafe unpickling).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from vpace.errors import UserError

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = "vpace-checkpoint-1"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered


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


class CheckpointError(UserError):
    """A checkpoint that cannot be used: names the folder and says why (one line, no unpickling advice)."""

    def __init__(self, path: str | os.PathLike, why: str) -> None:
        self.path, self.why = str(path), why
        super().__init__(f"checkpoint {self.path}: {why}")

    def __reduce__(self):  # raised inside Ray workers: keep (path, why) across the pickle
        return (type(self), (self.path, self.why))


class SkippedCheckpointWarning(UserWarning):
    """A broken checkpoint was passed over for the previous good one."""


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / META_FILE
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, f"no {META_FILE} (an unfinished copy?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"{META_FILE} is not valid UTF-8 JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read {META_FILE} ({e.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(path, f"{META_FILE} is not a vpace checkpoint record (format {got!r}, "
                                    f"expected {FORMAT!r})")
    return meta


def _load_failure(e: Exception, name: str) -> str:
    """Why torch.load failed, in one line. torch's own text advises `weights_only=False` (i.e. running
    whatever the file holds); a checkpoint that needs it is not a vpace checkpoint: never shown."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f"asks to import `{m.group(1)}`" if m else "holds objects other than tensors and plain data"
        return (f"{name} refused: it {what}, which a vpace checkpoint never does "
                "(not written by vpace, or tampered with)")
    if "mmap can only be used" in text:
        return f"{name} is not a torch zip archive (corrupt or not written by torch.save)"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(e).__name__
    why = f"{name} is truncated or corrupt ({first})"
    return why if "weights_only" not in why else f"{name} is truncated or corrupt"


def load_torch_file(f: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False,
                    where: str | os.PathLike | None = None) -> Any:
    """`torch.load(f, weights_only=True)`; `CheckpointError` naming `where` (default: the file) if it
    cannot be loaded. `mmap=True` checks the whole pickle without reading the tensor data."""
    f = Path(f)
    try:
        return torch.load(f, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError) as e:
        raise CheckpointError(where if where is not None else f, _load_failure(e, f.name)) from None


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
               ) -> dict[str, Any]:
    """Load a checkpoint's state with `weights_only=True` (no arbitrary unpickling); `CheckpointError` if it
    cannot be."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise CheckpointError(path, f"no {STATE_FILE} (an unfinished copy?)")
    state = load_torch_file(f, map_location, mmap=mmap, where=path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(path, f"{STATE_FILE} holds no model state dict")
    return state


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Meta + state readable (tensor data not read); returns the meta. Raises `CheckpointError`."""
    meta = read_meta(path)
    load_state(path, mmap=True)
    return meta


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint folder, complete or not: a half-copied one counts (it is skipped *with* a warning)."""
    p = Path(path)
    return p.is_dir() and ((p / STATE_FILE).exists() or (p / META_FILE).exists())


def _newest_first(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, highest step first (the step of the folder name when meta is broken)."""
    def key(c: Path) -> tuple[int, str]:
        try:
            step = int(read_meta(c).get("step", -1))
        except (CheckpointError, TypeError, ValueError):
            m = re.search(r"(\d+)", c.name)
            step = int(m.group(1)) if m else -1
        return step, c.name

    found = [c for c in run_dir.iterdir() if not c.name.startswith(".") and is_checkpoint(c)]
    return sorted(found, key=key, reverse=True)


T = TypeVar("T")


def _first_good(run_dir_or_ckpt: str | os.PathLike, use: Callable[[Path], T]) -> tuple[Path, T]:
    """THE rule for "the latest good checkpoint": a checkpoint folder given directly must work; under a run
    directory the newest one that `use` accepts wins and each newer broken one is named in a warning."""
    p = Path(run_dir_or_ckpt)
    if is_checkpoint(p):
        return p, use(p)
    if not p.is_dir():
        raise FileNotFoundError(f"no run directory or checkpoint at {p}")
    candidates = _newest_first(p)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint (a folder with {STATE_FILE} + {META_FILE}) under {p}")
    broken: list[CheckpointError] = []
    for c in candidates:
        try:
            out = use(c)
        except CheckpointError as e:
            broken.append(e)
            continue
        for e in broken:
            warnings.warn(SkippedCheckpointWarning(f"skipping checkpoint {e.path}: {e.why}; using the "
                                                   f"previous good one, {c.name}"), stacklevel=3)
        return c, out
    if len(broken) == 1:
        raise broken[0]
    older = "; ".join(f"{Path(e.path).name}: {e.why}" for e in broken[1:])
    raise CheckpointError(broken[0].path, f"{broken[0].why}; no older checkpoint of the run loads either "
                                          f"({older})")


def find_latest(run_dir_or_ckpt: str | os.PathLike) -> Path:
    """The checkpoint itself, or the newest good one of a run directory (see `_first_good`)."""
    return _first_good(run_dir_or_ckpt, check_checkpoint)[0]


def load_latest(run_dir_or_ckpt: str | os.PathLike, map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(path, state, meta) of the checkpoint itself or of the newest good one of a run directory."""
    path, (meta, state) = _first_good(run_dir_or_ckpt, lambda c: (read_meta(c), load_state(c, map_location)))
    return path, state, meta


# ------------------------------------------------------------------------------------------------ resume


@dataclass(frozen=True)
class ResumePlan:
    """Resume from `use` because Ray's latest registered checkpoint `skip` cannot be loaded. `taken`: the
    folder names Ray has registered; a new checkpoint must not reuse one (Ray would later delete it as the
    old entry of that name)."""

    skip: str
    use: str
    taken: frozenset[str]


def checkpoint_dir_name(step: int, plan: ResumePlan | None = None) -> str:
    name = base = f"checkpoint_{step:08d}"
    n = 1
    while plan is not None and name in plan.taken:
        name, n = f"{base}_{n}", n + 1
    return name


@dataclass(frozen=True)
class RegisteredCheckpoints:
    """Ray Train's record of a run's checkpoints: folder names oldest first, the latest one and the metrics
    reported with it."""

    names: list[str]
    latest: str
    metrics: dict[str, Any]


def registered_checkpoints(run_dir: str | os.PathLike) -> RegisteredCheckpoints | None:
    """Read `<run>/checkpoint_manager_snapshot.json`; None when Ray has registered no checkpoint yet."""
    run = Path(run_dir)
    try:
        snap = json.loads((run / SNAPSHOT_FILE).read_text())
        latest = snap.get("latest_checkpoint_result") or {}
        names = [r["checkpoint_dir_name"] for r in snap.get("checkpoint_results", [])]
        name, metrics = latest.get("checkpoint_dir_name"), dict(latest.get("metrics") or {})
        record = RegisteredCheckpoints(names, name, metrics) if name else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(run / SNAPSHOT_FILE, f"Ray's checkpoint record is unreadable ({e})") from None
    return record


def plan_resume(run_dir: str | os.PathLike) -> ResumePlan | None:
    """Driver side, before any worker starts: the checkpoint Ray will hand the workers (its latest registered
    one) must load. None: it does, or there is none. Else the newest older registered one that loads
    (warning); if none does, `CheckpointError` - a resume that can never succeed fails at once, not after
    `max_failures` retries."""
    run = Path(run_dir)
    record = registered_checkpoints(run)
    if record is None:
        return None
    latest, registered = record.latest, record.names
    try:
        check_checkpoint(run / latest)
        return None
    except CheckpointError as e:
        bad = e
    for c in [run / name for name in reversed(registered) if name != latest]:  # Ray lists oldest first
        try:
            check_checkpoint(c)
        except CheckpointError:
            continue
        warnings.warn(SkippedCheckpointWarning(f"skipping checkpoint {bad.path}: {bad.why}; resuming from "
                                               f"the previous good one, {c.name}"), stacklevel=2)
        return ResumePlan(skip=latest, use=str(c), taken=frozenset(registered))
    raise CheckpointError(bad.path, f"{bad.why}; it is the run's latest checkpoint and no older one loads, "
                                    "so resuming cannot work (use another run.name to start afresh)")


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
